"""Hugging Face Llama import (`convert_checkpoint.py --from hf`): logits equal transformers' in
fp32, the result is an ordinary release checkpoint (evaluate, --to hf, --init-from), and what the
model cannot represent is refused. Tiny random models built here; nothing is downloaded.

    pytest -q tests/unit/export/test_hf_import.py
"""
import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from megatron_patch.cli.convert_checkpoint import main as convert  # noqa: E402
from megatron_patch.config import ParallelConfig  # noqa: E402
from megatron_patch.model import build_model  # noqa: E402
from megatron_patch.training import checkpointing as ckpt  # noqa: E402
from tests._inproc import world_of_one  # noqa: E402

SEQ = 20


def hf_model(path, vocab=301, groups=2, tie=False, theta=123456.5, eps=3e-6, seed=0, tokenizer=None):
    """A random 2-layer LlamaForCausalLM saved at `path` (norm weights random too)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=groups, max_position_embeddings=256,
        rms_norm_eps=eps, rope_theta=theta, tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if p.dim() == 1 else 0.1 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer:
        from megatron_patch.export.tokenizer import write_hf_tokenizer

        write_hf_tokenizer(tokenizer, path)
    return model


def our_logits(ckpt_dir, ids, impl="sdpa"):
    """Logits of the imported checkpoint, loaded the way every tool loads weights."""
    import dataclasses

    with world_of_one():
        path = os.path.join(ckpt_dir, "release")
        cfg = ckpt.checkpoint_config(path).model
        model = build_model(dataclasses.replace(cfg, transformer_impl=impl), ParallelConfig()).eval()
        ckpt.load_weights(path, [model], cfg)
        with torch.no_grad():
            return model(ids, torch.arange(ids.shape[1]).expand_as(ids), None)


@pytest.mark.parametrize("groups,tie", [(2, False), (2, True), (4, False), (4, True)])
def test_logits_match_transformers(tmp_path, groups, tie):
    ref = hf_model(tmp_path / "hf", groups=groups, tie=tie)
    assert convert(["--from", "hf", "--load", str(tmp_path / "hf"), "--save", str(tmp_path / "ck")]) == 0
    assert (tmp_path / "ck" / "latest_checkpointed_iteration.txt").read_text() == "release"
    cfg = ckpt.checkpoint_config(str(tmp_path / "ck" / "release")).model
    assert (cfg.rotary_base, cfg.norm_epsilon, cfg.tie_embeddings) == (123456.5, 3e-6, tie)
    assert (cfg.num_query_groups or cfg.num_attention_heads) == groups and cfg.vocab_size == 301
    ids = torch.randint(0, 301, (2, SEQ), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ref(ids).logits
    got = our_logits(tmp_path / "ck", ids)
    assert got.shape == want.shape  # no padding rows: make_vocab_size_divisible_by is 1
    diff = (got - want).abs().max().item()
    print(f"max |logit diff| groups={groups} tie={tie}: {diff:.2e}")
    assert diff < 1e-4


def test_round_trip_and_evaluate(tmp_path):
    """--to hf of an import gives back the same tensors; evaluate.py reads it; the tokenizer
    files travel with the checkpoint."""
    from safetensors.torch import load_file

    from tests._data_helpers import tiny_tokenizer
    from tests.distributed.train_common import load_tool, make_corpus

    prefix, tok = make_corpus(str(tmp_path / "data"), num_documents=120)
    hf_model(tmp_path / "hf", vocab=400, groups=2, theta=500000.0, eps=1e-6, tokenizer=tiny_tokenizer())
    assert convert(["--from", "hf", "--load", str(tmp_path / "hf"), "--save", str(tmp_path / "ck")]) == 0
    cfg = ckpt.checkpoint_config(str(tmp_path / "ck" / "release"))
    assert cfg.data.tokenizer_model == str(tmp_path / "ck" / "tokenizer" / "tokenizer.model")
    assert {"tokenizer.model", "tokenizer.json"} <= set(os.listdir(tmp_path / "ck" / "tokenizer"))

    assert convert(["--load", str(tmp_path / "ck"), "--save", str(tmp_path / "back"), "--to", "hf"]) == 0
    a, b = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    back = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (back["rope_theta"], back["rms_norm_eps"], back["num_key_value_heads"]) == (500000.0, 1e-6, 2)
    assert (tmp_path / "back" / "tokenizer.model").is_file()

    out = tmp_path / "eval.json"
    rc = load_tool("evaluate.py").main(["--load", str(tmp_path / "ck"), "--data-path", prefix,
                                        "--tokenizer-model", cfg.data.tokenizer_model, "--eval-iters", "1",
                                        "--seq-length", "32", "--micro-batch-size", "2",
                                        "--global-batch-size", "2", "--output", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["tokens"] > 0 and 0 < result["loss"] < 20


@pytest.mark.parametrize("change,message", [
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "RoPE scaling"),
    ({"attention_bias": True}, "attention_bias"),
    ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "only LlamaForCausalLM"),
    ({"head_dim": 32}, "head_dim=32"),
])
def test_unsupported_models_are_refused(tmp_path, capsys, change, message):
    hf_model(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    config = json.loads(path.read_text())
    if "rope_scaling" in change:
        config.pop("rope_parameters", None)
    config.update(change)
    path.write_text(json.dumps(config))
    assert convert(["--from", "hf", "--load", str(tmp_path / "hf"), "--save", str(tmp_path / "ck")]) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "ck").exists()


def test_bad_inputs(tmp_path, capsys):
    assert convert(["--from", "hf", "--load", str(tmp_path / "nope"), "--save", str(tmp_path / "ck")]) == 1
    assert "does not exist" in capsys.readouterr().err
    hf_model(tmp_path / "hf")
    os.remove(tmp_path / "hf" / "model.safetensors")
    torch.save({}, tmp_path / "hf" / "pytorch_model.bin")
    assert convert(["--from", "hf", "--load", str(tmp_path / "hf"), "--save", str(tmp_path / "ck")]) == 1
    assert "no model.safetensors" in capsys.readouterr().err and not (tmp_path / "ck").exists()
    hf_model(tmp_path / "hf2", vocab=300)
    from safetensors.torch import load_file, save_file

    sd = load_file(tmp_path / "hf2" / "model.safetensors")
    sd["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(sd, str(tmp_path / "hf2" / "model.safetensors"), metadata={"format": "pt"})
    assert convert(["--from", "hf", "--load", str(tmp_path / "hf2"), "--save", str(tmp_path / "ck")]) == 1
    assert "q_proj.bias" in capsys.readouterr().err and not (tmp_path / "ck").exists()
    assert convert(["--from", "hf", "--to", "hf", "--load", str(tmp_path / "hf2"), "--save", str(tmp_path / "x")]) == 1
    assert "drop --to hf" in capsys.readouterr().err
