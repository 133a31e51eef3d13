"""Which transformer layer implementation a model is built from.

`impl` names (ModelConfig.transformer_impl):
- "te":    Transformer Engine's fused layers (GPU; chosen automatically when TE imports).
- "sdpa":  megatron-core's local layers with two swaps: core attention on PyTorch's
           scaled_dot_product_attention (flash kernels, O(s) memory) and an RMSNorm that supports
           sequence parallel (layer norms and final norm). The default without TE.
- "local": megatron-core's plain local spec (unfused O(s^2) attention, no sequence parallel);
           kept for comparison.
- "auto":  "te" when Transformer Engine imports, otherwise "sdpa".

All three build the same parameters under the same checkpoint keys, so weights move freely
between them. The path in use is printed once per process (rank 0).
"""
import copy
from typing import Optional

import torch
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_patch.layers.attention import SDPAttention
from megatron_patch.layers.norm import RMSNorm

IMPLS = ("auto", "te", "sdpa", "local")

_DESCRIPTION = {
    "te": "Transformer Engine fused layers",
    "sdpa": "PyTorch scaled_dot_product_attention + SP RMSNorm",
    "local": "megatron-core local spec: unfused DotProductAttention, no sequence parallel",
}
_announced = set()


def have_transformer_engine() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def _have_grad_accum_kernel() -> bool:
    """The fused weight-gradient accumulation kernel comes with Transformer Engine or NVIDIA Apex."""
    if have_transformer_engine():
        return True
    try:
        import fused_weight_gradient_mlp_cuda  # noqa: F401  (NVIDIA Apex)
    except Exception:
        return False
    return True


def kernel_fusions() -> dict:
    """TransformerConfig fusion switches: on with CUDA where megatron-core has a kernel, off on CPU.

    - bias_activation_fusion: megatron-core's fused SwiGLU (a TorchScript kernel on CUDA);
    - apply_rope_fusion: Transformer Engine's fused RoPE;
    - gradient_accumulation_fusion: fp32 main-grad accumulation inside the weight-gradient GEMM
      (TE or Apex).
    The unfused paths compute the same values; they are only slower."""
    from megatron_patch import device

    gpu = device.on_gpu()
    return {
        "bias_activation_fusion": gpu,
        "bias_dropout_fusion": gpu,
        "masked_softmax_fusion": False,  # unused: attention runs in TE or SDPA kernels
        "apply_rope_fusion": gpu and have_transformer_engine(),
        "gradient_accumulation_fusion": gpu and _have_grad_accum_kernel(),
    }


def resolve_impl(impl: str = "auto") -> str:
    """Turn "auto" into a concrete implementation name; reject unknown or unavailable ones."""
    if impl not in IMPLS:
        raise ValueError(f"transformer_impl={impl!r} is not one of {IMPLS}")
    if impl == "auto":
        return "te" if have_transformer_engine() else "sdpa"
    if impl == "te" and not have_transformer_engine():
        raise ValueError(
            "transformer_impl='te' needs Transformer Engine, which does not import here; "
            "install the `gpu` extra or use transformer_impl='auto' (falls back to 'sdpa')"
        )
    return impl


def sdpa_layer_spec() -> ModuleSpec:
    """megatron-core's local GPT layer spec with SDPA core attention and the SP-capable RMSNorm."""
    layer = copy.deepcopy(get_gpt_layer_local_spec(normalization="RMSNorm"))
    layer.submodules.input_layernorm = RMSNorm
    layer.submodules.pre_mlp_layernorm = RMSNorm
    layer.submodules.self_attention.submodules.core_attention = SDPAttention
    return layer


def _announce(requested: str, impl: str) -> None:
    """Print the layer path once per process and implementation, on rank 0 only."""
    if impl in _announced:
        return
    _announced.add(impl)
    if torch.distributed.is_initialized() and torch.distributed.get_rank() != 0:
        return
    why = "Transformer Engine not found" if requested == "auto" and impl == "sdpa" else (
        f"transformer_impl={requested!r}"
    )
    print(f"megatron-patch: layer spec = {impl} ({_DESCRIPTION[impl]}; {why})", flush=True)


def get_block_spec(
    config: TransformerConfig, impl: str = "auto", vp_stage: Optional[int] = None
) -> TransformerBlockSubmodules:
    """The layer specs of this pipeline stage plus the block's final norm (LLaMA: RMSNorm, SwiGLU)."""
    requested, impl = impl, resolve_impl(impl)
    if impl == "te":
        from megatron.core.extensions.transformer_engine import TENorm

        layer, final_norm = get_gpt_layer_with_transformer_engine_spec(), TENorm
    elif impl == "sdpa":
        layer, final_norm = sdpa_layer_spec(), RMSNorm
    else:
        if config.sequence_parallel:
            raise ValueError(
                "transformer_impl='local' (megatron-core's plain local spec) does not support "
                "sequence parallel; use transformer_impl='sdpa' or 'auto', or turn sequence "
                "parallel off"
            )
        from megatron.core.transformer.torch_norm import WrappedTorchNorm

        layer, final_norm = get_gpt_layer_local_spec(normalization="RMSNorm"), WrappedTorchNorm
    _announce(requested, impl)
    n = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer] * n, layer_norm=final_norm)
