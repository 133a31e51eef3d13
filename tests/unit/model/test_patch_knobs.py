"""The patch recipe's model knobs: weights over a patch's K targets (--patch-target-decay) and the
dtype of the K-token mean (--patch-mean-dtype), against hand computations, the plain-PyTorch
reference and, for the defaults, today's loss bit for bit."""
import pytest
import torch

from megatron_patch import distributed
from megatron_patch.config import ParallelConfig, get_preset
from megatron_patch.model import PatchGPTModel, build_model
from megatron_patch.patch import patch_cross_entropy, patch_embedding, target_weights
from tests._inproc import world_of_one
from tests.reference_llama import reference_forward


@pytest.fixture(scope="module")
def world():
    with world_of_one():
        yield


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def test_target_weights_by_hand():
    # R = 0.5, K = 4: 1, 1/2, 1/4, 1/8 (sum 15/8), scaled to average 1: x 4 / (15/8) = 32/15.
    expected = torch.tensor([32 / 15, 16 / 15, 8 / 15, 4 / 15])
    torch.testing.assert_close(target_weights(4, 0.5), expected, rtol=0, atol=1e-7)
    assert target_weights(4, 0.5).double().mean().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(target_weights(3, 1.0), torch.ones(3))  # uniform: exactly ones
    assert torch.equal(target_weights(1, 0.3), torch.ones(1))  # one target: nothing to weigh


def test_decayed_loss_by_hand():
    """Two patches of K = 2 over a 3-word vocabulary, R = 1/3: weights 3/2 and 1/2."""
    logits = torch.tensor([[[0.0, 1.0, 2.0]], [[1.0, 0.0, 0.0]]])  # [T=2, b=1, V=3]
    labels = torch.tensor([[2, 0, 1, 1]])  # patch 0 predicts 2, 0; patch 1 predicts 1, 1
    lse0 = torch.logsumexp(torch.tensor([0.0, 1.0, 2.0]), 0)
    lse1 = torch.logsumexp(torch.tensor([1.0, 0.0, 0.0]), 0)
    ce = torch.stack([lse0 - 2.0, lse0 - 0.0, lse1 - 0.0, lse1 - 0.0])
    expected = ce * torch.tensor([1.5, 0.5, 1.5, 0.5])
    loss = patch_cross_entropy(logits, labels, 2, target_decay=1 / 3)
    torch.testing.assert_close(loss[0], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("K,decay", [(2, 0.5), (4, 0.7), (4, 2.0)])
def test_decayed_loss_and_grad_match_log_softmax_reference(K, decay):
    torch.manual_seed(0)
    T, b, V = 5, 3, 37
    logits = torch.randn(T, b, V).requires_grad_()
    labels = torch.randint(0, V, (b, T * K))
    loss = patch_cross_entropy(logits, labels, K, target_decay=decay)
    loss.sum().backward()

    ref_logits = logits.detach().clone().requires_grad_()
    logp = ref_logits.log_softmax(-1).transpose(0, 1)  # [b, T, V]
    nll = -logp.gather(-1, labels.view(b, T, K))  # [b, T, K]
    w = torch.tensor([decay ** k for k in range(K)])
    ref = (nll * w * K / w.sum()).reshape(b, T * K)
    ref.sum().backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits.grad, ref_logits.grad, atol=1e-5, rtol=1e-5)


def test_uniform_weights_are_todays_loss_bitwise():
    torch.manual_seed(1)
    logits = torch.randn(6, 2, 50).requires_grad_()
    labels = torch.randint(0, 50, (2, 24))
    a = patch_cross_entropy(logits, labels, 4)
    b = patch_cross_entropy(logits, labels, 4, target_decay=1.0)
    assert torch.equal(a, b)


def test_model_with_decay_matches_reference(world):
    cfg = get_preset("tiny", vocab_size=512)
    K, decay, b, T = 4, 0.5, 2, 8
    distributed.set_seed(5)
    model = build_model(cfg, ParallelConfig(), patch_size=K, target_decay=decay)
    assert (model.target_decay, model.mean_dtype) == (decay, "fp32")
    ids = torch.randint(0, cfg.vocab_size, (b, T * K))
    labels = torch.randint(0, cfg.vocab_size, (b, T * K))
    loss = model(ids, None, None, labels=labels)
    loss.mean().backward()

    sd = {k: v.requires_grad_() for k, v in _state(model).items()}
    weights = target_weights(K, decay).repeat(T)  # target i*K + k weighs w_k
    ref = reference_forward(sd, cfg, ids, K, labels) * weights
    ref.mean().backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, sd[name].grad, atol=1e-5, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_knobs_change_no_parameter_and_k1_stays_gptmodel(world):
    from megatron.core.models.gpt import GPTModel

    cfg = get_preset("tiny")
    distributed.set_seed(7)
    plain = build_model(cfg, ParallelConfig(), patch_size=4)
    distributed.set_seed(7)
    knobs = build_model(cfg, ParallelConfig(), patch_size=4, target_decay=0.5, mean_dtype="param")
    assert list(plain.state_dict()) == list(knobs.state_dict())
    assert {k for k in plain.sharded_state_dict()} == {k for k in knobs.sharded_state_dict()}
    # K = 1: one target and no mean, so the knobs are inert and the model is GPTModel.
    distributed.set_seed(7)
    ours = build_model(cfg, ParallelConfig(), patch_size=1, target_decay=0.5, mean_dtype="param")
    distributed.set_seed(7)
    theirs = GPTModel(config=ours.config, transformer_layer_spec=ours.transformer_layer_spec,
                      vocab_size=ours.vocab_size, max_sequence_length=ours.max_sequence_length,
                      share_embeddings_and_output_weights=False, position_embedding_type="rope")
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    labels = torch.randint(0, cfg.vocab_size, (2, 16))
    assert torch.equal(ours(ids, None, None, labels=labels), theirs(ids, None, None, labels=labels))
    with pytest.raises(ValueError, match="mean_dtype"):
        PatchGPTModel.__init__(object.__new__(PatchGPTModel), patch_size=2, mean_dtype="fp16")
    with pytest.raises(ValueError, match="target_decay"):
        PatchGPTModel.__init__(object.__new__(PatchGPTModel), patch_size=2, target_decay=0.0)


def test_patch_mean_dtype_under_bf16(world):
    """fp32: the exact mean rounded once; param: a bf16 running sum (rounded after every
    addition) divided by K, which is what the K-1 additions in bf16 give by hand."""
    cfg = get_preset("tiny", vocab_size=512)
    K, b, T = 4, 2, 16
    distributed.set_seed(3)
    model = build_model(cfg, ParallelConfig(), patch_size=K, params_dtype=torch.bfloat16)
    ids = torch.randint(0, cfg.vocab_size, (b, T * K))
    emb = model.embedding.word_embeddings.weight[ids].detach()  # [b, T*K, h] bf16
    parts = emb.view(b, T, K, -1)

    exact = patch_embedding(model.embedding, ids, K, "fp32")
    assert torch.equal(exact, parts.float().mean(dim=2).transpose(0, 1).bfloat16())
    assert torch.equal(patch_embedding(model.embedding, ids, K), exact)  # the default

    running = parts[:, :, 0]
    for k in range(1, K):
        running = running + parts[:, :, k]  # bf16 + bf16 -> bf16: one rounding per addition
    by_hand = (running / K).transpose(0, 1)
    param = patch_embedding(model.embedding, ids, K, "param")
    assert param.dtype == torch.bfloat16 and torch.equal(param, by_hand)
    # They differ by bf16 roundings on some entries: K roundings of at most u = 2^-8 of partial
    # sums bounded by sum_k |e_k| (relative to the mean itself the error is unbounded where the
    # K embeddings cancel).
    differ = (param != exact).float().mean().item()
    assert 0 < differ < 0.5
    scale = parts.float().abs().mean(dim=2).transpose(0, 1)
    assert ((param.float() - exact.float()).abs() <= K * 2.0 ** -8 * scale).all()

    # The model runs the chosen mean: its loss differs, its shapes and keys do not.
    model.mean_dtype = "param"
    loss_param = model(ids, None, None, labels=ids)
    model.mean_dtype = "fp32"
    loss_fp32 = model(ids, None, None, labels=ids)
    assert loss_param.shape == loss_fp32.shape and not torch.equal(loss_param, loss_fp32)


def test_patch_mean_dtype_in_fp32_agrees(world):
    cfg = get_preset("tiny", vocab_size=512)
    distributed.set_seed(3)
    model = build_model(cfg, ParallelConfig(), patch_size=4)
    ids = torch.randint(0, cfg.vocab_size, (2, 32))
    torch.testing.assert_close(patch_embedding(model.embedding, ids, 4, "param"),
                               patch_embedding(model.embedding, ids, 4, "fp32"), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="mean_dtype"):
        patch_embedding(model.embedding, ids, 4, "fp16")
