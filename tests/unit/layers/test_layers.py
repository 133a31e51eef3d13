"""The TE-free "sdpa" layer spec against megatron-core's own local modules (fp32, CPU).

- `SDPAttention` equals megatron-core's `DotProductAttention` (forward and input gradients),
  multi-head and grouped-query, causal and with an explicit mask;
- the SP `RMSNorm` equals `torch.nn.RMSNorm` and is tagged for the TP gradient all-reduce;
- a whole PatchGPTModel (K=1, K=4) built with "sdpa" gives the losses and gradients of the one
  built with megatron-core's plain "local" spec, from the same checkpoint keys;
- spec selection: "auto" -> "sdpa" without Transformer Engine, printed once.
TP=2 with sequence parallel is in tests/test_sequence_parallel.py.
"""
import dataclasses

import pytest
import torch
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType

from megatron_patch.config import ParallelConfig, get_preset
from megatron_patch.layers import RMSNorm, SDPAttention, get_block_spec, resolve_impl
from megatron_patch.layers import spec as spec_module
from megatron_patch.model import build_model
from tests._inproc import world_of_one


@pytest.fixture(scope="module")
def world():
    with world_of_one():
        yield


def _config(heads=4, groups=None, **overrides):
    cfg = get_preset("tiny", num_attention_heads=heads, num_query_groups=groups)
    tc = cfg.transformer_config(ParallelConfig())
    return dataclasses.replace(tc, **overrides) if overrides else tc


def _attention_pair(config, mask_type=AttnMaskType.causal):
    kw = dict(config=config, layer_number=1, attn_mask_type=mask_type, attention_type="self")
    return SDPAttention(**kw), DotProductAttention(**kw)


def _qkv(config, sq=12, b=2):
    torch.manual_seed(0)
    hn, n, g = config.kv_channels, config.num_attention_heads, config.num_query_groups
    return [
        torch.randn(sq, b, heads, hn, requires_grad=True) for heads in (n, g, g)
    ]


def _run(module, q, k, v, mask):
    """Output and input gradients of one attention call under a fixed random upstream gradient."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = module(q, k, v, mask)
    torch.manual_seed(1)
    out.backward(torch.randn_like(out))
    return out.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("groups", [None, 2, 1], ids=["mha", "gqa2", "mqa"])
@pytest.mark.parametrize("masked", [False, True], ids=["causal", "explicit_mask"])
def test_sdpa_attention_equals_dot_product_attention(world, groups, masked):
    config = _config(heads=4, groups=groups)
    sdpa, ref = _attention_pair(config)
    q, k, v = _qkv(config)
    mask = None
    if masked:
        # megatron convention: True = masked. Causal plus random holes, key 0 always visible
        # (a fully masked row is defined differently: see SDPAttention's docstring).
        sq, b = q.shape[0], q.shape[1]
        g = torch.Generator().manual_seed(2)
        mask = torch.ones(sq, sq, dtype=torch.bool).triu(1) | (torch.rand(b, 1, sq, sq, generator=g) < 0.3)
        mask[..., 0] = False
    for got, want in zip(_run(sdpa, q, k, v, mask), _run(ref, q, k, v, mask)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_sdpa_mask_is_not_silently_causal(world):
    """A mask that allows the future must be honoured, not replaced by is_causal."""
    config = _config()
    sdpa, ref = _attention_pair(config)
    q, k, v = _qkv(config, sq=6, b=1)
    no_future = torch.ones(6, 6, dtype=torch.bool).triu(1).view(1, 1, 6, 6)
    open_mask = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    torch.testing.assert_close(sdpa(q, k, v, open_mask), ref(q, k, v, open_mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sdpa(q, k, v, no_future), sdpa(q, k, v, None), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(sdpa(q, k, v, open_mask), sdpa(q, k, v, None), atol=1e-3)


def test_sdpa_padding_type_without_mask_is_full_attention(world):
    config = _config()
    sdpa, ref = _attention_pair(config, mask_type=AttnMaskType.no_mask)
    q, k, v = _qkv(config, sq=7, b=1)
    torch.testing.assert_close(sdpa(q, k, v, None), ref(q, k, v, None), atol=1e-5, rtol=1e-5)


def test_sdpa_dropout_uses_megatron_rng_tracker(world):
    from megatron_patch.distributed import set_seed

    config = _config(attention_dropout=0.5)
    sdpa = SDPAttention(config=config, layer_number=1, attn_mask_type=AttnMaskType.causal,
                        attention_type="self")
    q, k, v = _qkv(config, sq=16)
    set_seed(7)
    a = sdpa(q, k, v, None)
    b = sdpa(q, k, v, None)  # the tracker's state moved on: a new draw
    set_seed(7)
    a2 = sdpa(q, k, v, None)
    torch.testing.assert_close(a, a2, atol=0, rtol=0)
    assert not torch.equal(a, b)
    sdpa.eval()
    nodrop = sdpa(q, k, v, None)
    sdpa.train()
    assert not torch.allclose(a, nodrop)
    set_seed(7)
    torch.testing.assert_close(sdpa.eval()(q, k, v, None), nodrop, atol=0, rtol=0)


def test_sdpa_rejects_what_it_cannot_do(world):
    with pytest.raises(ValueError, match="softmax_type"):
        _attention_pair(_config(softmax_type="off-by-one"))
    config = _config()
    sdpa, _ = _attention_pair(config)
    q, k, v = _qkv(config)
    with pytest.raises(ValueError, match="boolean"):
        sdpa(q, k, v, torch.zeros(1, 1, 12, 12))


@pytest.mark.parametrize("sp", [False, True])
def test_rms_norm_matches_torch_and_is_tagged_for_sp(world, sp):
    config = _config()
    config.sequence_parallel = sp  # set after __post_init__, which refuses SP at TP=1
    norm = RMSNorm(config, 64, eps=1e-5, persist_layer_norm=False)
    assert norm.weight.sequence_parallel is sp
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    ref = torch.nn.RMSNorm(64, eps=1e-5)
    ref.load_state_dict(norm.state_dict())
    x = torch.randn(5, 2, 64)
    torch.testing.assert_close(norm(x), ref(x), atol=0, rtol=0)


def test_auto_is_sdpa_without_transformer_engine():
    if spec_module.have_transformer_engine():
        assert resolve_impl("auto") == "te"
    else:
        assert resolve_impl("auto") == "sdpa"
        with pytest.raises(ValueError, match="Transformer Engine"):
            resolve_impl("te")
    assert resolve_impl("sdpa") == "sdpa" and resolve_impl("local") == "local"
    with pytest.raises(ValueError, match="not one of"):
        resolve_impl("flash")


def test_spec_choice_is_printed_once(world, capsys, monkeypatch):
    monkeypatch.setattr(spec_module, "_announced", set())
    config = _config()
    get_block_spec(config, "sdpa")
    get_block_spec(config, "sdpa")
    get_block_spec(config, "local")
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("megatron-patch: layer spec")]
    assert lines == [
        "megatron-patch: layer spec = sdpa (PyTorch scaled_dot_product_attention + SP RMSNorm; "
        "transformer_impl='sdpa')",
        "megatron-patch: layer spec = local (megatron-core local spec: unfused DotProductAttention, "
        "no sequence parallel; transformer_impl='local')",
    ]


def test_local_spec_with_sequence_parallel_is_refused_with_a_fix(world):
    config = _config()
    config.sequence_parallel = True  # set after __post_init__, which refuses SP at TP=1
    with pytest.raises(ValueError, match="transformer_impl='sdpa'"):
        get_block_spec(config, "local")
    sdpa = get_block_spec(config, "sdpa")
    assert sdpa.layer_norm is RMSNorm
    layer = sdpa.layer_specs[0].submodules
    assert layer.input_layernorm is RMSNorm and layer.pre_mlp_layernorm is RMSNorm
    assert layer.self_attention.submodules.core_attention is SDPAttention


@pytest.mark.parametrize("K,groups", [(1, None), (4, None), (4, 2)])
def test_patch_model_sdpa_equals_local_spec(world, K, groups):
    cfg = get_preset("tiny", num_query_groups=groups, vocab_size=512)
    torch.manual_seed(1)
    local = build_model(dataclasses.replace(cfg, transformer_impl="local"), ParallelConfig(), patch_size=K)
    sdpa = build_model(dataclasses.replace(cfg, transformer_impl="sdpa"), ParallelConfig(), patch_size=K)
    # Same parameters under the same keys: a checkpoint of one loads into the other.
    assert list(local.state_dict()) == list(sdpa.state_dict())
    # dist_checkpointing keys too (norms under TE's names, e.g. linear_qkv.layer_norm_weight).
    ckpt_keys = [sorted(v.key for v in m.sharded_state_dict().values()) for m in (local, sdpa)]
    assert ckpt_keys[0] == ckpt_keys[1]
    sdpa.load_state_dict(local.state_dict())
    b, T = 2, 16
    ids = torch.randint(0, cfg.vocab_size, (b, T * K))
    labels = torch.randint(0, cfg.vocab_size, (b, T * K))
    losses = []
    for model in (local, sdpa):
        loss = model(ids, None, None, labels=labels)
        loss.mean().backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], atol=1e-5, rtol=1e-5)
    for (name, p_local), p_sdpa in zip(local.named_parameters(), sdpa.parameters()):
        torch.testing.assert_close(p_sdpa.grad, p_local.grad, atol=1e-5, rtol=1e-4,
                                   msg=lambda m: f"{name}: {m}")
