"""Patch-level datasets over megatron-core's IndexedDataset.

An item of T patches of K tokens is read from (T+1)*K consecutive stream tokens:
    tokens       int64   [T*K]  inputs (patch i = tokens[i*K:(i+1)*K])
    labels       int64   [T*K]  the next patch's tokens: labels[i*K:(i+1)*K] = patch i+1
    loss_mask    float32 [T*K]  0 where a label is document-alignment padding
    position_ids int64   [T]    patch positions 0..T-1 (RoPE runs on patches)
With K=1 these are megatron-core GPTDataset's tokens/labels/loss_mask/position_ids.
Alignment padding reads as token id 0 (as GPTDataset maps its padding) and never counts in
the loss; inputs keep it, so a document's last patch averages its real tokens with id 0.
"""
from __future__ import annotations

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_patch.data.sample_index import num_samples_in, stream_lengths
from megatron_patch.data.stream import Segments, StreamIndices

PAD_TOKEN_ID = 0


class PatchDataset(torch.utils.data.Dataset):
    """`num_samples` shuffled samples of one split (or stage range) of one .bin/.idx file."""

    def __init__(self, indexed: IndexedDataset, segments: Segments, indices: StreamIndices,
                 patch_size: int, num_patches: int, num_samples: int, align_documents: bool,
                 name: str = "") -> None:
        available = len(indices.sample_index) - 1
        if num_samples > available:
            raise ValueError(f"{name}: asked for {num_samples} samples, the index holds {available}")
        self.indexed = indexed
        self.segments = segments
        self.indices = indices
        self.patch_size = patch_size
        self.num_patches = num_patches
        self.num_samples = num_samples
        self.align_documents = align_documents
        self.name = name
        self._position_ids = torch.arange(num_patches, dtype=torch.int64)
        stream_tokens = int(stream_lengths(segments.lengths, patch_size, align_documents).sum())
        self.samples_per_epoch = num_samples_in(stream_tokens, patch_size, num_patches)

    def __len__(self) -> int:
        return self.num_samples

    @property
    def epochs(self) -> float:
        """Passes over this data the samples make (above 1: the data repeats)."""
        return self.num_samples / max(self.samples_per_epoch, 1)

    def read(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        """The (T+1)*K stream tokens of sample `idx` (after shuffling) and which are real."""
        if not 0 <= idx < self.num_samples:
            raise IndexError(f"{self.name}: sample {idx} out of range [0, {self.num_samples})")
        k = self.patch_size
        size = (self.num_patches + 1) * k
        text = np.full(size, PAD_TOKEN_ID, dtype=np.int64)
        real = np.zeros(size, dtype=bool)
        sample = int(self.indices.shuffle_index[idx])
        position, offset = (int(v) for v in self.indices.sample_index[sample])
        filled = 0
        while filled < size:
            segment = int(self.indices.document_index[position])
            length = int(self.segments.lengths[segment])
            span = -(-length // k) * k if self.align_documents else length
            take = min(size - filled, span - offset)
            present = max(0, min(take, length - offset))
            if present:
                document, start = self.segments.document_and_offset(segment)
                text[filled: filled + present] = self.indexed.get(
                    document, offset=start + offset, length=present)
                real[filled: filled + present] = True
            filled += take
            position += 1
            offset = 0
        return text, real

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        text, real = self.read(idx)
        k = self.patch_size
        return {
            "tokens": torch.from_numpy(text[:-k]),
            "labels": torch.from_numpy(text[k:]),
            "loss_mask": torch.from_numpy(real[k:].astype(np.float32)),
            "position_ids": self._position_ids.clone(),
        }


class BlendedPatchDataset(torch.utils.data.Dataset):
    """Samples drawn from several datasets in proportion to weights (megatron-core's blending).

    dataset_index[i] names the component of sample i and dataset_sample_index[i] its sample
    there, as built by megatron-core's `build_blending_indices` (greedy: each step takes the
    component furthest below its share).
    """

    def __init__(self, datasets: list[PatchDataset], dataset_index: np.ndarray,
                 dataset_sample_index: np.ndarray) -> None:
        assert len(dataset_index) == len(dataset_sample_index)
        for i, dataset in enumerate(datasets):
            used = dataset_sample_index[dataset_index == i]
            if len(used) and int(used.max()) >= len(dataset):
                raise ValueError(f"blend needs sample {int(used.max())} of {dataset.name}, "
                                 f"which has {len(dataset)}")
        self.datasets = datasets
        self.dataset_index = dataset_index
        self.dataset_sample_index = dataset_sample_index

    def __len__(self) -> int:
        return len(self.dataset_index)

    @property
    def epochs(self) -> float:
        """Passes over the component that repeats most (its share of the samples / its size)."""
        counts = np.bincount(self.dataset_index, minlength=len(self.datasets))
        return max(int(n) / max(d.samples_per_epoch, 1) for n, d in zip(counts, self.datasets))

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        if not 0 <= idx < len(self):
            raise IndexError(f"blended sample {idx} out of range [0, {len(self)})")
        dataset = self.datasets[int(self.dataset_index[idx])]
        return dataset[int(self.dataset_sample_index[idx])]
