"""Transformer layer specs: Transformer Engine when it imports, megatron-core's local modules otherwise."""
from megatron_patch.layers.spec import get_block_spec, resolve_impl

__all__ = ["get_block_spec", "resolve_impl"]
