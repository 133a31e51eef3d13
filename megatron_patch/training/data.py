"""A stage's data: its training and validation datasets and the resumable order of micro-batches.

Step s of a stage reads the global samples [s*G, (s+1)*G) of the stage's training dataset
(G = global batch), so the data position is one number, `consumed_samples`, and is the same at
any data-parallel size. Micro-batch m of DP rank r holds samples
consumed + m*(mbs*dp) + r*mbs + [0, mbs). Every rank of a TP/PP group reads the same samples
from the memory-mapped dataset itself (no broadcast needed).
"""
from typing import List, Optional

import torch
from megatron.core import parallel_state

from megatron_patch import device


def build_datasets(cfg, stage, train_samples: int, valid_stage=None, valid_samples: int = 0):
    """(train dataset at the stage's K and data range or None, validation dataset at
    valid_stage's K (token level in training) or None)."""
    d = cfg.data
    if d.mock_data:
        from megatron_patch.data.mock import MockPatchDataset

        vocab = cfg.model.vocab_size
        train = (MockPatchDataset(train_samples, stage.patch_size, stage.positions, vocab, cfg.train.seed)
                 if train_samples else None)
        valid = (MockPatchDataset(valid_samples, valid_stage.patch_size, valid_stage.positions, vocab,
                                  cfg.train.seed, split=1) if valid_samples else None)
        return train, valid

    from megatron_patch.data import build_train_valid_test_datasets

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
            d.data_path, d.split, valid_stage.patch_size, valid_stage.seq_length, (0, valid_samples, 0),
            **common,
        )
    return train, valid


def _collate(items: List[dict], dev) -> dict:
    out = {}
    for key in ("tokens", "labels", "loss_mask", "position_ids"):
        out[key] = torch.stack([torch.as_tensor(it[key]) for it in items]).to(dev, non_blocking=True)
    return out


class StepBatches:
    """Micro-batches of one global step for this data-parallel rank, resumable by sample count."""

    def __init__(self, dataset, stage, dp_rank: Optional[int] = None, dp_size: Optional[int] = None):
        if dataset is None or len(dataset) == 0:
            raise ValueError(f"{stage.name} stage: its dataset is empty; check --data-path and --split")
        self.dataset = dataset
        self.stage = stage
        self.mbs = stage.micro_batch_size
        self.gbs = stage.global_batch_size
        self.dp_rank = parallel_state.get_data_parallel_rank() if dp_rank is None else dp_rank
        self.dp_size = parallel_state.get_data_parallel_world_size() if dp_size is None else dp_size
        self.num_microbatches = self.gbs // (self.mbs * self.dp_size)
        self.device = device.current()

    def get(self, consumed_samples: int) -> List[dict]:
        """The micro-batches of the step that starts at global sample `consumed_samples`."""
        n = len(self.dataset)
        batches = []
        for m in range(self.num_microbatches):
            start = consumed_samples + m * self.mbs * self.dp_size + self.dp_rank * self.mbs
            # Wrap only if the dataset is shorter than the stage (it is sized for the whole stage).
            batches.append(_collate([self.dataset[(start + i) % n] for i in range(self.mbs)], self.device))
        return batches

    def steps(self, count: int):
        """The first `count` steps' micro-batches (evaluation reads the same batches every time)."""
        return (self.get(i * self.gbs) for i in range(count))


class StageData:
    """Everything a stage reads: its training batches and the token-level validation batches."""

    def __init__(self, cfg, stage, eval_stage):
        train, valid = build_datasets(cfg, stage, stage.train_iters * stage.global_batch_size,
                                      eval_stage, eval_stage.train_iters * eval_stage.global_batch_size)
        self.train = StepBatches(train, stage)
        self.valid = StepBatches(valid, eval_stage) if valid is not None else None
        self.epochs = float(getattr(train, "epochs", 1.0))
        """Passes over the stage's share of the data (above 1: it repeats)."""
        self.sources = [] if cfg.data.mock_data else _shares(train)
        """Per --data-path prefix: the stage's samples from it and their share."""


def _shares(dataset) -> list:
    from megatron_patch.data.builder import data_shares

    return data_shares(dataset)
