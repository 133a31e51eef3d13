"""Data for patch-level training: offline preprocessing, the K-aligned sample index, datasets.

    from megatron_patch.data import load_tokenizer, build_train_valid_test_datasets, split_token_counts

Names are imported lazily (PEP 562) so that preprocessing workers, which only need
their tokenizer library and NumPy, start without importing torch and megatron-core.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_tokenizer": "megatron_patch.data.tokenizer",
    "SentencePieceTokenizer": "megatron_patch.data.tokenizer",
    "HuggingFaceTokenizer": "megatron_patch.data.tokenizer",
    "NullTokenizer": "megatron_patch.data.tokenizer",
    "TOKENIZER_TYPES": "megatron_patch.data.tokenizer",
    "build_train_valid_test_datasets": "megatron_patch.data.builder",
    "split_token_counts": "megatron_patch.data.builder",
    "parse_blend": "megatron_patch.data.paths",
    "check_data_paths": "megatron_patch.data.paths",
    "PatchDataset": "megatron_patch.data.dataset",
    "BlendedPatchDataset": "megatron_patch.data.dataset",
    "build_sample_index": "megatron_patch.data.sample_index",
    "reference_sample_index": "megatron_patch.data.sample_index",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'megatron_patch.data' has no attribute {name!r}")
