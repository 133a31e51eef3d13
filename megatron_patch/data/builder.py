"""Train/valid/test patch datasets from Megatron-style --data-path and --split.

    train, valid, test = build_train_valid_test_datasets(
        ["0.7", "data/a_text_document", "0.3", "data/b_text_document"], "969,30,1",
        patch_size=4, seq_length=8192, num_samples=(n_train, n_valid, n_test), seed=1234,
        train_range=(0.0, 2 / 3))          # patch stage; the token stage passes (2/3, 1.0)

Megatron semantics: each prefix is split by documents in file order (split "969,30,1" ->
first 96.9% train, ...); a blend with weights draws each split's samples from the components
in proportion (each component builds 0.5% more than its share, as megatron-core does); a blend
without weights is weighted by each component's tokens in that split. `train_range` selects a
fraction of every component's train token stream, walked in a permutation of its documents
seeded by `seed` (data/stream.py), so two stages never see the same tokens and both read the
same distribution however the file is ordered.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np
from megatron.core.datasets.blended_megatron_dataset_config import (
    convert_split_vector_to_split_matrix,
    parse_and_normalize_split,
)
from megatron.core.datasets.indexed_dataset import IndexedDataset
from torch.utils.data import Dataset

from megatron_patch.data.cache import cached_arrays
from megatron_patch.data.dataset import BlendedPatchDataset, PatchDataset
from megatron_patch.data.paths import check_prefix, parse_blend
from megatron_patch.data.sample_index import num_samples_in, stream_lengths
from megatron_patch.data.stream import Segments, StreamIndices, build_stream_indices, select_segments

SPLIT_NAMES = ("train", "valid", "test")
BLEND_SURPLUS = 0.005  # megatron-core's mid_level_dataset_surplus


def _open(prefix: str) -> IndexedDataset:
    check_prefix(prefix)
    return IndexedDataset(prefix, mmap=True)


def _document_ranges(num_documents: int, split: str) -> list[Optional[tuple[int, int]]]:
    """Megatron's split: contiguous document ranges per split, None for an empty split."""
    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    ranges: list[Optional[tuple[int, int]]] = []
    for bookends in matrix:
        if bookends is None:
            ranges.append(None)
            continue
        begin = int(round(bookends[0] * float(num_documents)))
        end = int(round(bookends[1] * float(num_documents)))
        ranges.append((begin, end) if end > begin else None)
    return ranges


def split_token_counts(data_path: Sequence[str], split: str) -> tuple[int, int, int]:
    """Tokens in the train/valid/test documents, summed over the blend's components."""
    prefixes, _ = parse_blend(data_path)
    counts = [0, 0, 0]
    for prefix in prefixes:
        indexed = _open(prefix)  # keep it alive: sequence_lengths is a view of its mmap
        lengths = indexed.sequence_lengths
        for i, doc_range in enumerate(_document_ranges(len(lengths), split)):
            if doc_range is not None:
                counts[i] += int(lengths[doc_range[0]: doc_range[1]].sum(dtype=np.int64))
    return counts[0], counts[1], counts[2]


class _Component:
    """One prefix: its IndexedDataset and the segments each split (stage range) reads."""

    def __init__(self, prefix: str, split: str, train_range: tuple[float, float], seed: int) -> None:
        self.prefix = prefix
        self.indexed = _open(prefix)
        lengths = self.indexed.sequence_lengths
        self.document_ranges = _document_ranges(len(lengths), split)
        self.segments: list[Optional[Segments]] = []
        for i, doc_range in enumerate(self.document_ranges):
            token_range = train_range if i == 0 else (0.0, 1.0)
            self.segments.append(
                None if doc_range is None else select_segments(lengths, doc_range, token_range, seed))

    def tokens(self, split: int) -> int:
        segments = self.segments[split]
        return 0 if segments is None else segments.num_tokens


def _build_component(component: _Component, split: int, patch_size: int, num_patches: int,
                     num_samples: int, seed: int, align_documents: bool,
                     train_range: tuple[float, float], cache_dir: str) -> PatchDataset:
    name = f"{component.prefix} [{SPLIT_NAMES[split]}]"
    segments = component.segments[split]
    if segments is None or segments.num_tokens == 0:
        raise ValueError(f"{name}: the split gives this data no documents; change --split "
                         "or ask for 0 samples of this split")
    stream_tokens = int(stream_lengths(segments.lengths, patch_size, align_documents).sum())
    if num_samples_in(stream_tokens, patch_size, num_patches) < 1:
        raise ValueError(f"{name}: {segments.num_tokens} tokens, fewer than one sample of "
                         f"(T+1)*K = {(num_patches + 1) * patch_size}; use more data or a "
                         "shorter --seq-length")
    description = {
        "kind": "patch",
        "prefix": os.path.abspath(component.prefix),
        # Identify the file's content cheaply: re-preprocessing in place changes size or mtime.
        "idx_bytes": os.path.getsize(component.prefix + ".idx"),
        "idx_mtime_ns": os.stat(component.prefix + ".idx").st_mtime_ns,
        "split": SPLIT_NAMES[split],
        "document_range": list(component.document_ranges[split]),
        "token_range": list(train_range) if split == 0 else [0.0, 1.0],
        "document_order": ("file" if split or tuple(train_range) == (0.0, 1.0)
                           else "permuted by seed"),
        "segments": [int(segments.documents[0]), segments.head_offset, len(segments.lengths),
                     segments.num_tokens],
        "patch_size": patch_size,
        "seq_length": patch_size * num_patches,
        "num_samples": num_samples,
        "seed": seed,
        "align_documents": align_documents,
    }

    def build() -> dict[str, np.ndarray]:
        indices = build_stream_indices(segments.lengths, patch_size, num_patches, num_samples,
                                       seed, align_documents)
        return {"document_index": indices.document_index, "sample_index": indices.sample_index,
                "shuffle_index": indices.shuffle_index}

    arrays = cached_arrays(cache_dir, description,
                           ("document_index", "sample_index", "shuffle_index"), build)
    indices = StreamIndices(arrays["document_index"], arrays["sample_index"],
                            arrays["shuffle_index"])
    return PatchDataset(component.indexed, segments, indices, patch_size, num_patches,
                        num_samples, align_documents, name)


def _blend(datasets: list[PatchDataset], weights: list[float], size: int,
           cache_dir: str) -> BlendedPatchDataset:
    """Blend `size` samples; the indices depend only on the weights and the size."""
    from megatron.core.datasets import helpers_cpp

    def build() -> dict[str, np.ndarray]:
        dataset_index = np.zeros(size, dtype=np.int16)
        dataset_sample_index = np.zeros(size, dtype=np.int64)
        helpers_cpp.build_blending_indices(dataset_index, dataset_sample_index,
                                           np.asarray(weights, dtype=np.float64),
                                           len(datasets), size, False)
        return {"dataset_index": dataset_index, "dataset_sample_index": dataset_sample_index}

    arrays = cached_arrays(cache_dir, {"kind": "blend", "weights": weights, "size": size},
                           ("dataset_index", "dataset_sample_index"), build)
    return BlendedPatchDataset(datasets, arrays["dataset_index"], arrays["dataset_sample_index"])


def build_train_valid_test_datasets(
    data_path: Sequence[str],
    split: str,
    patch_size: int,
    seq_length: int,
    num_samples: tuple[int, int, int],
    seed: int,
    train_range: tuple[float, float] = (0.0, 1.0),
    align_documents: bool = False,
    cache_dir: Optional[str] = None,
) -> tuple[Optional[Dataset], Optional[Dataset], Optional[Dataset]]:
    """Train/valid/test datasets of exactly num_samples items each (None where 0 are asked).

    seq_length is the input tokens per sample, T*K. train_range is the fraction (a, b) of each
    component's train token stream this stage reads. Index caches go to cache_dir (default:
    `index-cache` beside the first prefix); with torch.distributed initialised, rank 0 builds
    them and the other ranks memory-map them after a barrier, so every rank must call this.
    """
    if not isinstance(patch_size, int) or patch_size < 1:
        raise ValueError(f"patch_size (K) must be an integer >= 1, got {patch_size!r}")
    if seq_length < patch_size or seq_length % patch_size:
        raise ValueError(f"seq_length {seq_length} must be a positive multiple of patch_size "
                         f"{patch_size} (it is T*K input tokens)")
    if len(num_samples) != 3 or any(n < 0 for n in num_samples):
        raise ValueError(f"num_samples must be 3 counts >= 0 (train, valid, test), got {num_samples}")
    low, high = float(train_range[0]), float(train_range[1])
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"train_range must satisfy 0 <= a < b <= 1, got {train_range}")
    num_patches = seq_length // patch_size
    prefixes, weights = parse_blend(data_path)
    if cache_dir is None:
        cache_dir = os.path.join(os.path.dirname(os.path.abspath(prefixes[0])), "index-cache")
    components = [_Component(p, split, (low, high), seed) for p in prefixes]

    result: list[Optional[Dataset]] = []
    for i, wanted in enumerate(num_samples):
        if wanted == 0:
            result.append(None)
            continue
        common = dict(patch_size=patch_size, num_patches=num_patches, seed=seed,
                      align_documents=align_documents, train_range=(low, high),
                      cache_dir=cache_dir)
        if len(components) == 1:
            result.append(_build_component(components[0], i, num_samples=wanted, **common))
            continue
        split_weights = weights
        if split_weights is None:  # weight by the tokens each component holds in this split
            tokens = [c.tokens(i) for c in components]
            split_weights = [t / sum(tokens) for t in tokens] if sum(tokens) else None
            if split_weights is None:
                raise ValueError(f"the {SPLIT_NAMES[i]} split is empty in every --data-path prefix")
        parts, part_weights = [], []
        for component, weight in zip(components, split_weights):
            if weight == 0:
                continue
            share = int(math.ceil(math.ceil(wanted * weight) * (1 + BLEND_SURPLUS)))
            parts.append(_build_component(component, i, num_samples=share, **common))
            part_weights.append(weight)
        total = sum(part_weights)
        part_weights = [w / total for w in part_weights]
        result.append(_blend(parts, part_weights, wanted, cache_dir))
    return result[0], result[1], result[2]



def data_shares(dataset: Dataset) -> list[dict]:
    """Where a stage's samples come from: per --data-path prefix (each JSON key of a
    preprocessing run is its own prefix), its sample count, share of the stage's samples and the
    tokens of the stage's range of it."""
    if isinstance(dataset, BlendedPatchDataset):
        parts = dataset.datasets
        counts = np.bincount(dataset.dataset_index, minlength=len(parts)).tolist()
    else:
        parts, counts = [dataset], [len(dataset)]
    total = max(sum(counts), 1)
    shares = []
    for part, count in zip(parts, counts):
        shares.append({"prefix": part.indexed.path_prefix, "samples": int(count),
                       "share": round(count / total, 6),
                       "range_tokens": part.segments.num_tokens})
    return shares
