"""The patch embedding and K-target loss in bf16 against the fp32 reference.

bf16 keeps 8 significant bits (7 stored + the implicit one), so rounding to nearest changes a
value by at most u = 2^-8 = 0.39% of itself (the unit roundoff; fp32's is 2^-24). The
tolerances below are stated in units of u.
"""
import pytest
import torch
from megatron.core.transformer.module import Float16Module

from megatron_patch import distributed
from megatron_patch.config import ParallelConfig, get_preset
from megatron_patch.model import build_model
from megatron_patch.patch import patch_cross_entropy, patch_embedding
from tests._inproc import world_of_one

BF16_U = 2.0**-8  # unit roundoff of bf16: 8 significant bits


@pytest.fixture(scope="module")
def world():
    with world_of_one():
        yield


@pytest.mark.parametrize("K", [1, 4])
def test_loss_on_bf16_logits_is_computed_in_fp32(K):
    """bf16 logits give the fp32 loss of the same values and, in bf16, the fp32 gradient.

    The loss is computed entirely in fp32, so the only rounding left is the final cast of the
    gradient to the logits' dtype: the bf16 gradient is exactly the fp32 one rounded once.
    """
    torch.manual_seed(0)
    T, b, V = 6, 3, 320
    logits16 = (3 * torch.randn(T, b, V)).bfloat16().requires_grad_()
    logits32 = logits16.detach().float().requires_grad_()
    labels = torch.randint(0, V, (b, T * K))
    weights = torch.rand(b, T * K)

    loss16 = patch_cross_entropy(logits16, labels, K)
    loss32 = patch_cross_entropy(logits32, labels, K)
    assert loss16.dtype == torch.float32
    # Same inputs, same fp32 arithmetic: equal up to the order of fp32 summation.
    torch.testing.assert_close(loss16, loss32, rtol=1e-6, atol=1e-6)
    (loss16 * weights).sum().backward()
    (loss32 * weights).sum().backward()
    assert logits16.grad.dtype == torch.bfloat16
    assert torch.equal(logits16.grad, logits32.grad.bfloat16())
    # A bf16 logsumexp would be off by up to log(V) * 2^-8 ~ 2e-2 nats; fp32 is ~1e-6.
    assert (loss16 - loss32).abs().max().item() < 1e-5


def test_patch_mean_rounds_once_from_fp32(world):
    """The bf16 patch input is the exact (fp32) mean of the K bf16 embeddings, rounded once."""
    cfg = get_preset("tiny", vocab_size=512)
    K, b, T = 4, 2, 8
    distributed.set_seed(3)
    model = build_model(cfg, ParallelConfig(), patch_size=K, params_dtype=torch.bfloat16)
    ids = torch.randint(0, cfg.vocab_size, (b, T * K))
    out = patch_embedding(model.embedding, ids, K)
    assert out.dtype == torch.bfloat16 and out.shape == (T, b, cfg.hidden_size)
    emb = model.embedding.word_embeddings.weight[ids].float()  # [b, T*K, h], exact in fp32
    expected = emb.view(b, T, K, -1).mean(dim=2).transpose(0, 1).bfloat16()
    assert torch.equal(out, expected)


def _fp32_and_bf16(cfg, K):
    """An fp32 model and a bf16 copy of its weights run the way the trainer runs bf16
    (megatron-core's Float16Module: bf16 weights and activations, fp32 loss out)."""
    distributed.set_seed(11)
    m32 = build_model(cfg, ParallelConfig(), patch_size=K)
    m16 = build_model(cfg, ParallelConfig(), patch_size=K, params_dtype=torch.bfloat16)
    m16.load_state_dict(m32.state_dict())
    return m32, Float16Module(m16.config, m16)


@pytest.mark.parametrize("K", [1, 4])
def test_bf16_model_loss_and_grads_track_fp32(world, K):
    """Loss and every parameter's gradient of the bf16 model against the fp32 model.

    Tolerances, relative, in units of u = 2^-8:
    - the mean loss: u. Each per-token loss is an fp32 log-softmax of logits that went
      through 4 layers of bf16 matmuls, norms and residual adds (a few roundings of at most u
      each, of random sign), and the mean over 256 targets cancels most of it: measured
      ~4e-5 (u/100).
    - each per-token loss: 2u (measured up to 7e-4, u/5).
    - each gradient, as ||g16 - g32|| / ||g32||: 8u (3.1%). A weight gradient multiplies a
      bf16 activation by a bf16 back-propagated error, each carrying the roundings of every
      layer it crossed, and is itself stored in bf16; measured up to 1.2% (the RMSNorm weights,
      whose gradient is a sum over positions of products of rounded factors).
    Weights that are not the fp32 ones, a gradient landing on the wrong tensor, or fp16's
    overflow show as O(1) errors.
    """
    cfg = get_preset("tiny", vocab_size=512)
    m32, m16 = _fp32_and_bf16(cfg, K)
    g = torch.Generator().manual_seed(K)
    b, T = 4, 16
    ids = torch.randint(0, cfg.vocab_size, (b, T * K), generator=g)
    labels = torch.randint(0, cfg.vocab_size, (b, T * K), generator=g)

    loss32 = m32(ids, None, None, labels=labels)
    loss16 = m16(ids, None, None, labels=labels)
    assert loss16.dtype == torch.float32 and loss16.shape == (b, T * K)
    loss32.mean().backward()
    loss16.mean().backward()

    assert abs(loss16.mean().item() - loss32.mean().item()) <= BF16_U * loss32.mean().item()
    torch.testing.assert_close(loss16, loss32, rtol=2 * BF16_U, atol=0)
    checked = 0
    for (name, p32), (name16, p16) in zip(m32.named_parameters(), m16.module.named_parameters()):
        assert name == name16
        assert p16.dtype == torch.bfloat16 and p16.grad.dtype == torch.bfloat16, name
        err = ((p16.grad.float() - p32.grad).norm() / p32.grad.norm()).item()
        assert err <= 8 * BF16_U, f"{name}: gradient relative error {err:.3e} > 8u"
        checked += 1
    assert checked == len(list(m32.parameters()))
