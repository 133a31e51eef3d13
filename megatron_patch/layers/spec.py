"""Which transformer layer implementation a model is built from.

`impl` names:
- "te":    Transformer Engine's fused layers (GPU; used automatically when TE imports).
- "local": megatron-core's plain local modules (unfused attention, no sequence parallel).
- "auto":  "te" when Transformer Engine imports, otherwise the default local path.
"""
from typing import Optional

from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

IMPLS = ("auto", "te", "local")


def have_transformer_engine() -> bool:
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def resolve_impl(impl: str = "auto") -> str:
    """Turn "auto" into a concrete implementation name; reject unknown or unavailable ones."""
    if impl not in IMPLS:
        raise ValueError(f"transformer_impl={impl!r} is not one of {IMPLS}")
    if impl == "auto":
        return "te" if have_transformer_engine() else "local"
    if impl == "te" and not have_transformer_engine():
        raise ValueError(
            "transformer_impl='te' needs Transformer Engine, which does not import here; "
            "install the `gpu` extra or use transformer_impl='auto'"
        )
    return impl


def get_block_spec(
    config: TransformerConfig, impl: str = "auto", vp_stage: Optional[int] = None
) -> TransformerBlockSubmodules:
    """The layer specs of this pipeline stage plus the block's final norm (LLaMA: RMSNorm, SwiGLU)."""
    impl = resolve_impl(impl)
    if impl == "te":
        from megatron.core.extensions.transformer_engine import TENorm

        layer, final_norm = get_gpt_layer_with_transformer_engine_spec(), TENorm
    else:
        from megatron.core.transformer.torch_norm import WrappedTorchNorm

        layer, final_norm = get_gpt_layer_local_spec(normalization="RMSNorm"), WrappedTorchNorm
    n = get_num_layers_to_build(config, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[layer] * n, layer_norm=final_norm)
