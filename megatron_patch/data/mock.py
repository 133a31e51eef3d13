"""`--mock-data`: random tokens in the shape of real samples, for bring-up and throughput checks.

Sample i is drawn from a generator seeded with (seed, i), so every rank and every relaunch
reads the same tokens without files. Items have the fields of `PatchDataset` items.
"""
from __future__ import annotations

import numpy as np
import torch


class MockPatchDataset(torch.utils.data.Dataset):
    """`num_samples` samples of T patches of K uniformly random token ids in [0, vocab_size)."""

    def __init__(self, num_samples: int, patch_size: int, num_patches: int, vocab_size: int,
                 seed: int, split: int = 0) -> None:
        self.num_samples = num_samples
        self.patch_size = patch_size
        self.num_patches = num_patches
        self.vocab_size = vocab_size
        self.seed = (seed, split)
        self.samples_per_epoch = num_samples  # generated on demand: never repeats
        self._position_ids = torch.arange(num_patches, dtype=torch.int64)

    epochs = 1.0

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        if not 0 <= idx < self.num_samples:
            raise IndexError(f"mock sample {idx} out of range [0, {self.num_samples})")
        k = self.patch_size
        rng = np.random.default_rng((*self.seed, idx))
        text = torch.from_numpy(rng.integers(0, self.vocab_size, (self.num_patches + 1) * k, dtype=np.int64))
        return {
            "tokens": text[:-k].clone(),
            "labels": text[k:].clone(),
            "loss_mask": torch.ones(self.num_patches * k, dtype=torch.float32),
            "position_ids": self._position_ids,
        }
