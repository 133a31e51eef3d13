"""PatchGPTModel against an independent reference and against megatron-core's own GPTModel."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from megatron_patch.config import ParallelConfig, get_preset
from megatron_patch.model import PatchGPTModel, build_model
from megatron_patch.patch import patch_cross_entropy
from tests._inproc import world_of_one
from tests.reference_llama import reference_forward


@pytest.fixture(scope="module")
def world():
    with world_of_one():
        yield


def _params(model):
    return {n: p for n, p in model.named_parameters()}


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize("K", [1, 2, 4])
def test_patch_cross_entropy_matches_log_softmax_reference(K):
    torch.manual_seed(0)
    T, b, V = 5, 3, 37
    logits = torch.randn(T, b, V, dtype=torch.float64).float().requires_grad_()
    labels = torch.randint(0, V, (b, T * K))
    labels[0, :K] = labels[0, 0]  # repeated targets within one patch must accumulate
    before = logits.detach().clone()
    loss = patch_cross_entropy(logits, labels, K)
    assert torch.equal(logits.detach(), before), "logits were modified in place"
    weights = torch.rand(b, T * K)
    (loss * weights).sum().backward()

    ref_logits = before.clone().requires_grad_()
    logp = ref_logits.log_softmax(-1).transpose(0, 1)  # [b, T, V]
    ref = torch.stack(
        [F.nll_loss(logp.reshape(-1, V), labels.view(b, T, K)[..., k].reshape(-1), reduction="none") for k in range(K)],
        dim=-1,
    ).view(b, T * K)
    (ref * weights).sum().backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits.grad, ref_logits.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("K,groups", [(1, None), (4, None), (4, 2), (3, 1)])
def test_model_loss_and_grads_match_plain_pytorch(world, K, groups):
    cfg = get_preset("tiny", num_query_groups=groups, vocab_size=512)
    torch.manual_seed(1)
    model = build_model(cfg, ParallelConfig(), patch_size=K)
    b, T = 2, 8
    ids = torch.randint(0, cfg.vocab_size, (b, T * K))
    labels = torch.randint(0, cfg.vocab_size, (b, T * K))

    loss = model(ids, None, None, labels=labels)
    assert loss.shape == (b, T * K)
    loss.mean().backward()

    sd = {k: v.requires_grad_() for k, v in _state(model).items()}
    ref = reference_forward(sd, cfg, ids, K, labels)
    ref.mean().backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    for name, p in _params(model).items():
        torch.testing.assert_close(p.grad, sd[name].grad, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")

    logits = model(ids, None, None)
    assert logits.shape == (b, T, cfg.padded_vocab_size())
    torch.testing.assert_close(logits, reference_forward(sd, cfg, ids, K).detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["local", "auto"])
def test_k1_is_megatron_gptmodel_bitwise(world, impl):
    from megatron.core.models.gpt import GPTModel

    from megatron_patch import distributed

    cfg = get_preset("tiny", transformer_impl=impl)
    distributed.set_seed(7)
    ours = build_model(cfg, ParallelConfig(), patch_size=1)
    distributed.set_seed(7)
    theirs = GPTModel(
        config=ours.config,
        transformer_layer_spec=ours.transformer_layer_spec,
        vocab_size=ours.vocab_size,
        max_sequence_length=ours.max_sequence_length,
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
    )
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for (n, a), (_, c) in zip(ours.state_dict().items(), theirs.state_dict().items()):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, c), n
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    labels = torch.randint(0, cfg.vocab_size, (2, 16))
    la, lb = ours(ids, None, None, labels=labels), theirs(ids, None, None, labels=labels)
    assert torch.equal(la, lb)
    la.sum().backward()
    lb.sum().backward()
    for (n, a), (_, c) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.equal(a.grad, c.grad), n


def test_patch_weights_load_into_token_model(world):
    cfg = get_preset("tiny")
    patch_model = build_model(cfg, ParallelConfig(), patch_size=4)
    token_model = build_model(cfg, ParallelConfig(), patch_size=1)
    token_model.load_state_dict(patch_model.state_dict(), strict=True)
    ids = torch.randint(0, cfg.vocab_size, (1, 12))
    # A patch model fed K=1-sized patches is the token model: same weights, same function.
    token_logits = token_model(ids, None, None)
    patch_model.patch_size = 1
    torch.testing.assert_close(patch_model(ids, None, None), token_logits, atol=0, rtol=0)
    sharded = {k for k in patch_model.sharded_state_dict()}
    assert sharded == {k for k in token_model.sharded_state_dict()}


def test_patch_size_validated_by_model():
    with pytest.raises(ValueError, match="patch_size"):
        PatchGPTModel.__init__(object.__new__(PatchGPTModel), patch_size=0)


def test_tied_embeddings(world):
    cfg = get_preset("tiny", tie_embeddings=True)
    model = build_model(cfg, ParallelConfig(), patch_size=2)
    assert "output_layer.weight" not in dict(model.named_parameters())
    ids = torch.randint(0, cfg.vocab_size, (2, 8))
    sd = _state(model)
    torch.testing.assert_close(
        model(ids, None, None, labels=ids), reference_forward(sd, cfg, ids, 2, ids), atol=1e-5, rtol=1e-5
    )
