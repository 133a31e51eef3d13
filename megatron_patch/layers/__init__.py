"""Transformer layer specs: Transformer Engine when it imports, otherwise the fast TE-free "sdpa"
spec (PyTorch scaled_dot_product_attention + sequence-parallel RMSNorm); megatron-core's plain
"local" spec stays available for comparison."""
from megatron_patch.layers.attention import SDPAttention
from megatron_patch.layers.norm import RMSNorm
from megatron_patch.layers.spec import IMPLS, get_block_spec, resolve_impl, sdpa_layer_spec

__all__ = ["get_block_spec", "resolve_impl", "sdpa_layer_spec", "SDPAttention", "RMSNorm", "IMPLS"]
