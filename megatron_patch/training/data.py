"""Datasets of a stage and the deterministic, resumable order of its micro-batches.

Step s of a stage reads the global samples [s*G, (s+1)*G) of the stage's training dataset
(G = global batch), so the data position is one number, `consumed_samples`, and is the same at
any data-parallel size. Micro-batch m of DP rank r holds samples
consumed + m*(mbs*dp) + r*mbs + [0, mbs). Every rank of a TP/PP group reads the same samples
from the memory-mapped dataset itself (no broadcast needed).
"""
import os
from typing import List

import torch


def data_prefixes(data_path: List[str]) -> List[str]:
    """The prefixes of ["PREFIX"] or ["w1", "A", "w2", "B"] (Megatron's blend syntax)."""
    def is_number(s):
        try:
            float(s)
            return True
        except ValueError:
            return False

    if len(data_path) > 1 and len(data_path) % 2 == 0 and all(is_number(w) for w in data_path[::2]):
        return list(data_path[1::2])
    return list(data_path)


def check_data_paths(data_path: List[str]) -> None:
    """Every prefix must have PREFIX.bin and PREFIX.idx (checked on every rank before any collective)."""
    for prefix in data_prefixes(data_path):
        missing = [ext for ext in (".bin", ".idx") if not os.path.isfile(prefix + ext)]
        if missing:
            raise ValueError(
                f"--data-path {prefix}: {' and '.join(prefix + e for e in missing)} not found; pass "
                "the prefix written by tools/preprocess_data.py (without .bin/.idx), e.g. "
                "data/corpus_text_document"
            )


def build_stage_datasets(cfg, stage, eval_stage, train_samples: int, valid_samples: int):
    """(train dataset at the stage's K and range, token-level validation dataset or None)."""
    from megatron_patch.data import build_train_valid_test_datasets

    d = cfg.data
    common = dict(seed=cfg.train.seed, align_documents=d.align_documents, cache_dir=d.cache_dir)
    train = None
    if train_samples > 0:
        train, _, _ = build_train_valid_test_datasets(
            d.data_path, d.split, stage.patch_size, stage.seq_length, (train_samples, 0, 0),
            train_range=stage.train_range, **common,
        )
    valid = None
    if valid_samples > 0:
        _, valid, _ = build_train_valid_test_datasets(
            d.data_path, d.split, 1, eval_stage.seq_length, (0, valid_samples, 0), **common,
        )
    return train, valid


def _collate(items: List[dict], device) -> dict:
    out = {}
    for key in ("tokens", "labels", "loss_mask", "position_ids"):
        out[key] = torch.stack([torch.as_tensor(it[key]) for it in items]).to(device, non_blocking=True)
    return out


class StepBatches:
    """Micro-batches of one global step for this data-parallel rank, resumable by sample count."""

    def __init__(self, dataset, stage, dp_rank: int, dp_size: int):
        if dataset is None or len(dataset) == 0:
            raise ValueError(f"{stage.name} stage: its dataset is empty; check --data-path and --split")
        self.dataset = dataset
        self.mbs = stage.micro_batch_size
        self.gbs = stage.global_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.num_microbatches = self.gbs // (self.mbs * dp_size)
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    def get(self, consumed_samples: int) -> List[dict]:
        """The micro-batches of the step that starts at global sample `consumed_samples`."""
        n = len(self.dataset)
        batches = []
        for m in range(self.num_microbatches):
            start = consumed_samples + m * self.mbs * self.dp_size + self.dp_rank * self.mbs
            # Wrap only if the dataset is shorter than the stage (it is sized for the whole stage).
            batches.append(_collate([self.dataset[(start + i) % n] for i in range(self.mbs)], self.device))
        return batches


def num_valid_samples(eval_stage) -> int:
    return eval_stage.train_iters * eval_stage.global_batch_size

