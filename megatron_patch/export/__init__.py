"""Exports of trained models to other ecosystems (Hugging Face Llama)."""
from megatron_patch.export.hf import ExportError, export_hf, megatron_to_hf_state_dict

__all__ = ["ExportError", "export_hf", "megatron_to_hf_state_dict"]
