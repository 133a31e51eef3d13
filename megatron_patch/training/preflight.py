"""Checks of a run config against files and the launch, before any heavy import or process group.

Everything a user can get wrong in flags (budget, batch divisibility, K vs sequence lengths,
missing data or tokenizer, a used run directory, a bad --load) fails here in a second or two, on
every rank alike, with a message that says the fix; nothing hangs waiting on a rank that already
failed. `resolve` fills in what the run derives (vocab_size from the tokenizer, the dtype, the
position count) and runs once per launch: the Trainer refuses an unresolved config.
"""
import os

from megatron_patch import device
from megatron_patch.data.paths import check_data_paths
from megatron_patch.training.config import RunConfig
from megatron_patch.training.metrics import check_dashboards
from megatron_patch.training.ownership import check_launch
from megatron_patch.training.stages import plan_stages


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
    """Check `cfg` against the files and the launch and fill in what the run derives."""
    from megatron_patch.data import load_tokenizer

    if getattr(cfg, "resolved", False):
        return cfg
    if not cfg.checkpoint.save:
        raise ValueError("--save is required: the run directory for checkpoints and metrics")
    check_launch(cfg)
    check_dashboards(cfg.logging)  # --tensorboard-dir / --wandb-project without the package
    d = cfg.data
    if not d.mock_data:
        check_data_paths(d.data_path)
    cfg.model.vocab_size = load_tokenizer(d.tokenizer_model, tokenizer_type=d.tokenizer_type,
                                          vocab_size=d.vocab_size, vocab_file=d.vocab_file,
                                          merge_file=d.merge_file).vocab_size
    cfg.train.bf16 = device.compute_dtype(cfg.train.bf16) == device.compute_dtype(True)
    if cfg.checkpoint.init_from and not os.path.exists(cfg.checkpoint.init_from):
        raise ValueError(f"--init-from {cfg.checkpoint.init_from} does not exist")
    stages = plan_stages(cfg, data_parallel_size(cfg))  # batch / length / warmup checks per stage
    if cfg.model.max_position_embeddings is None:
        cfg.model.max_position_embeddings = max(s.positions for s in stages)
    cfg.resolved = True
    return cfg
