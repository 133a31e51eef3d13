"""Checks of a run config against files and the launch, before any heavy import or process group.

Everything a user can get wrong in flags (budget, batch divisibility, K vs sequence lengths,
missing data or tokenizer, bf16 without a GPU) fails here in a second or two, on every rank
alike, with a message that says the fix; nothing hangs waiting on a rank that already failed.
"""
import os

import torch

from megatron_patch.training.config import RunConfig, check
from megatron_patch.training.data import check_data_paths
from megatron_patch.training.stages import plan_stages


def compute_dtype(cfg) -> torch.dtype:
    """bf16 on GPU, fp32 on CPU unless --bf16/--fp32 say otherwise."""
    bf16 = cfg.train.bf16
    if bf16 is None:
        bf16 = torch.cuda.is_available()
    if bf16 and not torch.cuda.is_available():
        raise ValueError("--bf16 needs a GPU here; on CPU train in fp32 (drop --bf16 or pass --fp32)")
    return torch.bfloat16 if bf16 else torch.float32


def data_parallel_size(cfg) -> int:
    """DP from the launch environment (torchrun's WORLD_SIZE), before process groups exist."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    mp = cfg.parallel.tensor_model_parallel_size * cfg.parallel.pipeline_model_parallel_size
    if world % mp:
        raise ValueError(
            f"world size {world} is not divisible by TP x PP = {mp}; launch a multiple of TP*PP "
            "processes (the rest is data parallel)"
        )
    return world // mp


def resolve(cfg: RunConfig) -> RunConfig:
    """Validate and fill what the run derives: vocab_size from the tokenizer, the dtype."""
    from megatron_patch.data import load_tokenizer

    check(cfg)
    if not cfg.checkpoint.save:
        raise ValueError("--save is required: the run directory for checkpoints and metrics")
    check_data_paths(cfg.data.data_path)
    cfg.model.vocab_size = load_tokenizer(cfg.data.tokenizer_model).vocab_size
    cfg.train.bf16 = compute_dtype(cfg) == torch.bfloat16
    if cfg.checkpoint.init_from and not os.path.isdir(cfg.checkpoint.init_from):
        raise ValueError(f"--init-from {cfg.checkpoint.init_from} does not exist")
    plan_stages(cfg, data_parallel_size(cfg))  # batch / length / warmup checks per stage
    return cfg
