"""Hugging Face Llama export: logits of the exported model match megatron-core's (CPU, fp32).

    pytest -q tests/unit/export/test_export_hf.py
"""
import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from megatron_patch.config import ParallelConfig, get_preset  # noqa: E402
from megatron_patch.distributed import destroy, initialize  # noqa: E402
from megatron_patch.export import ExportError, export_hf, megatron_to_hf_state_dict  # noqa: E402
from megatron_patch.layers.spec import IMPLS  # noqa: E402
from megatron_patch.model import build_model  # noqa: E402

SEQ = 24
IMPLS_TO_TEST = [i for i in ("local", "sdpa") if i in IMPLS]


@pytest.fixture(scope="module", autouse=True)
def world_of_one():
    initialize(ParallelConfig(), seed=1234)
    yield
    destroy()


def _model(patch_size=1, seed=0, randomize=True, **overrides):
    """A tiny PatchGPTModel; every weight (norms included) random so no mapping error hides."""
    overrides.setdefault("transformer_impl", IMPLS_TO_TEST[0])
    cfg = get_preset("tiny", **overrides)
    torch.manual_seed(seed)
    from megatron_patch.distributed import set_seed

    set_seed(seed)
    model = build_model(cfg, ParallelConfig(), patch_size=patch_size).eval()
    if randomize:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return cfg, model


def _megatron_logits(model, ids):
    pos = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)
    with torch.no_grad():
        return model(ids, pos, None)  # [b, s, padded vocab]


def _hf_logits(path, ids):
    hf = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(ids).logits


@pytest.mark.parametrize("impl", IMPLS_TO_TEST)
@pytest.mark.parametrize("groups,tie", [(None, False), (2, False), (2, True), (1, True)])
def test_logits_match(tmp_path, impl, groups, tie):
    cfg, model = _model(num_query_groups=groups, tie_embeddings=tie, transformer_impl=impl)
    ids = torch.randint(0, cfg.vocab_size, (2, SEQ), generator=torch.Generator().manual_seed(7))
    out = export_hf(model, cfg, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["vocab_size"] == cfg.vocab_size  # true vocabulary, padding rows dropped
    assert config["num_key_value_heads"] == (groups or cfg.num_attention_heads)
    assert config["tie_word_embeddings"] == tie
    ref = _megatron_logits(model, ids)
    assert ref.shape[-1] == cfg.padded_vocab_size() > cfg.vocab_size
    got = _hf_logits(out, ids)
    assert got.shape == (2, SEQ, cfg.vocab_size)
    torch.testing.assert_close(got, ref[..., : cfg.vocab_size], atol=1e-4, rtol=1e-4)
    assert not [p for p in os.listdir(tmp_path) if p != "hf"], "temporary directory left behind"


def test_patch_model_exports_token_model_weights(tmp_path):
    """K=4 has exactly K=1's parameters: same seed, same exported tensors, same HF logits."""
    cfg, token_model = _model(patch_size=1, seed=3, num_query_groups=2)
    _, patch_model = _model(patch_size=4, seed=3, num_query_groups=2)
    a = megatron_to_hf_state_dict(token_model, cfg)
    b = megatron_to_hf_state_dict(patch_model, cfg)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ids = torch.randint(0, cfg.vocab_size, (1, SEQ), generator=torch.Generator().manual_seed(1))
    out = export_hf(patch_model, cfg, tmp_path / "hf")
    torch.testing.assert_close(_hf_logits(out, ids), _megatron_logits(token_model, ids)[..., : cfg.vocab_size],
                               atol=1e-4, rtol=1e-4)


def test_transformer_engine_norm_keys(monkeypatch):
    """TE fuses the norms into linear_qkv / linear_fc1 as `layer_norm_weight`: same export."""
    cfg, model = _model(seed=5)
    want = megatron_to_hf_state_dict(model, cfg)
    sd = model.state_dict()
    renamed = {}
    for k, v in sd.items():
        k = k.replace("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight")
        k = k.replace("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight")
        renamed[k] = v
    monkeypatch.setattr(model, "state_dict", lambda *a, **kw: renamed)
    got = megatron_to_hf_state_dict(model, cfg)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_bf16_on_disk(tmp_path):
    cfg, model = _model(seed=2)
    out = export_hf(model, cfg, tmp_path / "hf", dtype=torch.bfloat16)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}


def test_unsupported_and_bad_input(tmp_path, monkeypatch):
    cfg, model = _model(seed=4, randomize=False)
    with pytest.raises(ExportError, match="hidden_size"):
        export_hf(model, get_preset("tiny", hidden_size=128), tmp_path / "a")
    with pytest.raises(ExportError, match="tie_embeddings"):
        export_hf(model, get_preset("tiny", tie_embeddings=True), tmp_path / "a")
    monkeypatch.setattr(model.rotary_pos_emb, "rotary_interleaved", True)
    with pytest.raises(ExportError, match="interleaved RoPE"):
        export_hf(model, cfg, tmp_path / "a")
    monkeypatch.undo()
    monkeypatch.setattr(model.config, "add_bias_linear", True)
    with pytest.raises(ExportError, match="bias"):
        export_hf(model, cfg, tmp_path / "a")
    monkeypatch.undo()
    model.post_process = False
    with pytest.raises(ExportError, match="pipeline stage"):
        export_hf(model, cfg, tmp_path / "a")
    model.post_process = True
    assert not (tmp_path / "a").exists()

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        export_hf(model, cfg, tmp_path / "full")
    assert os.listdir(tmp_path / "full") == ["keep.txt"]
    export_hf(model, cfg, tmp_path / "full", overwrite=True)
    assert sorted(os.listdir(tmp_path / "full")) == ["config.json", "generation_config.json", "model.safetensors"]

    # A failure while writing leaves neither the output nor a temporary directory.
    import megatron_patch.export.hf as hf_mod

    def boom(*a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        hf_mod.export_hf(model, cfg, tmp_path / "b")
    assert sorted(os.listdir(tmp_path)) == ["full"]


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    """A small LLaMA-style BPE sentencepiece model (tools/train_tokenizer.py's settings) of 1000 pieces."""
    spm = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    import inspect

    d = tmp_path_factory.mktemp("spm")
    text = "".join(inspect.getsource(m) for m in (json, os, inspect, pytest))
    lines = [line for line in text.splitlines() if line.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(d / "tok"), model_type="bpe", vocab_size=1000,
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2, num_threads=1,
    )
    return d / "tok.model", lines


def test_tokenizer_shipped(tmp_path, spm_model):
    import sentencepiece as spm

    path, lines = spm_model
    cfg, model = _model(seed=6)
    out = export_hf(model, cfg, tmp_path / "hf", tokenizer_model=path)
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, None)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    texts = ["\n".join(lines[i:i + 20]) for i in range(0, 400, 20)] + ["  two  spaces,\ttab\n", "Ünïcödé 🙂"]
    for text in texts:
        assert tok(text, add_special_tokens=False).input_ids == sp.encode(text)
        assert tok.decode(sp.encode(text)) == text
    assert tok.eos_token_id == 2 and tok.bos_token_id == 1


def test_tokenizer_vocab_mismatch(tmp_path, spm_model):
    cfg, model = _model(seed=6, vocab_size=1200)
    with pytest.raises(ValueError, match="1000 pieces"):
        export_hf(model, cfg, tmp_path / "hf", tokenizer_model=spm_model[0])
    assert not os.listdir(tmp_path)
