"""RMSNorm that works with megatron-core sequence parallel.

With sequence parallel each TP rank normalises only its slice of the sequence, so its weight
gradient is a partial sum. megatron-core's `finalize_model_grads` all-reduces the gradients of
parameters tagged `sequence_parallel = True` across the TP group; megatron's `WrappedTorchNorm`
never tags and refuses SP outright. This is `torch.nn.RMSNorm` (same math, same state-dict key
`weight`) built from a TransformerConfig with that tag set.
"""
import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_patch import device


class RMSNorm(torch.nn.RMSNorm):
    """`torch.nn.RMSNorm` over the hidden size whose weight is tagged for SP gradient all-reduce."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **unused):
        # **unused: megatron builds norms with extra keywords (persist_layer_norm, ...) it also
        # passes to Apex/TE norms; none of them changes an RMSNorm's math.
        if config.normalization != "RMSNorm":
            raise ValueError(
                f"this layer spec implements RMSNorm only, got normalization={config.normalization!r}"
            )
        if config.layernorm_zero_centered_gamma:
            raise ValueError("layernorm_zero_centered_gamma is not supported by the sdpa spec's RMSNorm")
        # Same placement as megatron's parallel linears: the CPU with use_cpu_initialization,
        # otherwise this rank's device (its GPU; the CPU on a machine without one).
        where = "cpu" if config.use_cpu_initialization else device.current()
        super().__init__(hidden_size, eps=eps, device=where, dtype=config.params_dtype)
        self.weight.sequence_parallel = config.sequence_parallel
