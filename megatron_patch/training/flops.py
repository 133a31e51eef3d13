"""Model FLOPs of a training step, and MFU where the device's peak is known.

Per transformer position (one token at K = 1, one patch of K tokens otherwise), forward +
backward, counting a multiply-add as 2 FLOPs and backward as twice the forward:

    matmuls:    6 * (L * (h*(h + 2*kv) + h*h + 3*h*f) + h*V)     qkv, proj, SwiGLU, output layer
    attention:  12 * L * h * T                                   QK^T and AV over T positions
                                                                 (PaLM's convention: no causal halving)
    patch:      2 * K * h + 3 * K                                K-token embedding mean (fwd+bwd)
                                                                 and the K-target loss gathers

with h = hidden, f = ffn_hidden, kv = key/value width, V = padded vocabulary, L = layers,
T = positions per sample. The input embedding gather is not counted (no matmul). A patch
position therefore costs a token position of a length-T sample plus a negligible K term, while
consuming K tokens: that is the whole saving.
"""
import torch

# Dense peak TFLOP/s by device-name substring and compute dtype (vendor datasheets, SXM parts).
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp32": 494.0},  # fp32 = TF32 tensor cores
    "H100": {"bf16": 989.0, "fp32": 494.0},
    "A100": {"bf16": 312.0, "fp32": 156.0},
    "L40S": {"bf16": 362.0, "fp32": 183.0},
    "A10G": {"bf16": 70.0, "fp32": 35.0},
}


def flops_per_position(model_cfg, patch_size: int, positions: int, tp: int = 1) -> float:
    h, f, L = model_cfg.hidden_size, model_cfg.ffn_hidden_size, model_cfg.num_layers
    kv = (model_cfg.num_query_groups or model_cfg.num_attention_heads) * (h // model_cfg.num_attention_heads)
    V = model_cfg.padded_vocab_size(tp)
    matmul_params = L * (h * (h + 2 * kv) + h * h + 3 * h * f) + h * V
    K = patch_size
    return 6.0 * matmul_params + 12.0 * L * h * positions + 2.0 * K * h + 3.0 * K


def flops_per_step(model_cfg, stage, tp: int = 1) -> float:
    """Model FLOPs of one optimizer step of `stage` (all ranks together)."""
    positions = stage.global_batch_size * stage.positions
    return positions * flops_per_position(model_cfg, stage.patch_size, stage.positions, tp)


def token_only_flops(model_cfg, tokens: int, seq_length: int, tp: int = 1) -> float:
    """FLOPs a token-level run (K = 1, samples of seq_length) spends on `tokens` tokens."""
    return tokens * flops_per_position(model_cfg, 1, seq_length, tp)


def device_peak_tflops(bf16: bool):
    """Peak dense TFLOP/s of one local accelerator for the compute dtype, or None if unknown."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks["bf16" if bf16 else "fp32"]
    return None


MEGATRON_LM_FLOPS_FORMULA = (
    "per step of B samples of s positions (Megatron-LM num_floating_point_operations, dense GQA "
    "+ SwiGLU): 6*B*s*[L*(h*(q+2*kv) + q*h + 3*h*f) + h*V] + 6*B*s^2*L*q, "
    "with q = heads*head_dim, kv = groups*head_dim, f = ffn width, V = padded vocabulary; "
    "6 = 3 GEMMs (forward, data grad, weight grad) x 2 FLOPs per multiply-add; the s^2 term is "
    "QK^T and PV with the causal mask halving it. The patch model counts its T positions; its "
    "K-token mean and K-target gathers (2Kh + 3K per position) are left out."
)


def megatron_lm_flops(model_cfg, batch_size: int, seq_length: int, tp: int = 1) -> float:
    """Model FLOPs of one forward+backward over `batch_size` samples of `seq_length` positions,
    counted as Megatron-LM's `num_floating_point_operations` counts a dense GPT (see
    MEGATRON_LM_FLOPS_FORMULA), so MFU compares with its logs.

    It differs from `flops_per_position` (the trainer's count) in the attention term: Megatron-LM
    halves QK^T and PV for the causal mask (6*L*q*s per position), the trainer does not
    (12*L*h*s, PaLM's convention), and the trainer adds the patch terms. At s = 2048 on the 370M
    model the trainer's count is 13% higher.
    """
    h, f, L = model_cfg.hidden_size, model_cfg.ffn_hidden_size, model_cfg.num_layers
    heads = model_cfg.num_attention_heads
    head_dim = h // heads
    q = heads * head_dim
    kv = (model_cfg.num_query_groups or heads) * head_dim
    V = model_cfg.padded_vocab_size(tp)
    per_position = 6.0 * (L * (h * (q + 2 * kv) + q * h + 3 * h * f) + h * V)
    attention = 6.0 * L * q * seq_length  # per position: 6 * L * q * s^2 / s
    return batch_size * seq_length * (per_position + attention)
