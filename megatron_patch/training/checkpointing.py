"""Training checkpoints: what a resumed run needs on top of the weights (megatron_patch/checkpoint/).

    CKPT_DIR/iter_0000020/          one checkpoint (sharded tensors + common state + config.yaml)
    CKPT_DIR/release/               a weights-only checkpoint (tools/convert_checkpoint.py --to token)
    CKPT_DIR/latest_checkpointed_iteration.txt   "20" or "release"

The format (dist_checkpointing torch_dist, the pointer written last, tensors with global shapes)
is megatron_patch/checkpoint/'s; this module adds the run's side. Contents of a full checkpoint:
model weights (`model` or `model0..`), optimizer (`optimizer.*`, DistributedOptimizer state saved
`fully_reshardable`), and in the common state the LR scheduler, the `TrainState` (step, data
position, accounting), the stage and the layout it was saved at, plus the per-rank RNG states.
Tensors load at any TP/PP/DP; RNG states are restored only at the layout they were saved at.
config.yaml beside every checkpoint is the resolved RunConfig.
"""
import os
import random
from typing import Optional

import numpy as np
import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_patch.checkpoint import store
# Re-exported: the names tests and tools use from here.
from megatron_patch.checkpoint.architecture import (  # noqa: F401
    megatron_lm_args, megatron_lm_model_config, model_differences,
)
from megatron_patch.checkpoint.store import FORMAT_VERSION, common_state, model_sharded_state_dict  # noqa: F401
from megatron_patch.training import rundir
from megatron_patch.training.config import RunConfig, config_from_dict, load_yaml, to_yaml
from megatron_patch.training.state import TrainState

OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def checkpoint_config(path: str) -> RunConfig:
    """The resolved run config saved beside a checkpoint."""
    try:
        return config_from_dict(load_yaml(os.path.join(path, rundir.CONFIG_FILE)), launch=False)
    except ValueError as err:
        raise rundir.CheckpointError(f"checkpoint {path}: unreadable {rundir.CONFIG_FILE} ({err})") from None


# ----------------------------------------------------------------------------- state dicts


def _dp_rank_size():
    return (parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size())


def layout() -> dict:
    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
    }


def get_rng_state() -> dict:
    state = {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded(data) -> ShardedObject:
    lay = layout()
    offset = (
        parallel_state.get_pipeline_model_parallel_rank(),
        parallel_state.get_tensor_model_parallel_rank(),
        parallel_state.get_data_parallel_rank(),
    )
    return ShardedObject("rng_state", data, (lay["pp"], lay["tp"], lay["dp"]), offset, replica_id=0)


def _full_state_dict(chunks, optimizer, is_loading: bool, with_rng: bool) -> dict:
    sd = model_sharded_state_dict(chunks)
    if optimizer is not None:
        # The optimizer's state is keyed by the model's sharded tensors (Megatron-LM passes the
        # whole dict of model chunks too).
        sd["optimizer"] = optimizer.sharded_state_dict(
            dict(sd), is_loading=is_loading, metadata=dict(OPTIM_METADATA)
        )
    if with_rng:
        sd["rng_state"] = _rng_sharded(get_rng_state())
    return sd


# ----------------------------------------------------------------------------- save


def save_checkpoint(
    ckpt_dir: str,
    cfg: RunConfig,
    chunks,
    optimizer=None,
    scheduler=None,
    train_state=None,
    stage=None,
) -> str:
    """Save (all ranks); weights only when optimizer is None. Returns the checkpoint path."""
    if optimizer is None:
        return store.save_weights(ckpt_dir, chunks, to_yaml(cfg))
    sd = _full_state_dict(chunks, optimizer, is_loading=False, with_rng=True)
    sd["kind"] = "full"
    sd["format_version"] = FORMAT_VERSION
    sd["scheduler"] = scheduler.state_dict()
    sd["train_state"] = train_state.to_dict()
    sd["stage"] = stage.to_dict()
    sd["layout"] = layout()
    return store.save(ckpt_dir, sd, to_yaml(cfg), step=train_state.step)


def completed(path: str) -> Optional[bool]:
    """Whether the full checkpoint `path` was saved after its stage's last step (None for
    weights-only checkpoints and checkpoints from other tools: nothing to say)."""
    common = common_state(path)
    if common.get("kind") != "full" or "train_state" not in common:
        return None
    state = TrainState.from_checkpoint(common)
    return state.completed or state.step >= common.get("stage", {}).get("train_iters", float("inf"))


def require_completed(path: str, allow_unfinished: bool, what: str) -> None:
    """Refuse to hand over an unfinished stage's checkpoint unless explicitly allowed."""
    if allow_unfinished or completed(path) is not False:
        return
    common = common_state(path)
    state = TrainState.from_checkpoint(common)
    raise rundir.CheckpointError(
        f"{what}: {path} is step {state.step} of {common['stage']['train_iters']} of an unfinished "
        f"{state.stage} stage. Finish the stage first (relaunch it with --load), or pass "
        "--allow-unfinished-stage to hand over these weights deliberately"
    )


# ----------------------------------------------------------------------------- load


def check_model_matches(path: str, model_cfg) -> None:
    """The saved architecture must equal `model_cfg` (fields set to None are not compared).

    The saved one is config.yaml's, or for a Megatron-LM checkpoint its saved `args`."""
    args = None if os.path.isfile(os.path.join(path, rundir.CONFIG_FILE)) else megatron_lm_args(path)
    if args is not None:
        saved, source = megatron_lm_model_config(args, path), "Megatron-LM args"
    else:
        saved, source = checkpoint_config(path).model, rundir.CONFIG_FILE
    # Megatron-LM saves only the padded vocabulary; load_weights compares the table sizes.
    diff = model_differences(saved, model_cfg, skip=("vocab_size",) if args is not None else ())
    if diff:
        pretty = "; ".join(f"{k}: checkpoint {a} vs requested {b}" for k, (a, b) in diff.items())
        raise rundir.CheckpointError(
            f"checkpoint {path} was saved for a different model ({pretty}; from its {source}); "
            "use the same model config / tokenizer as the run that saved it"
        )


def load_weights(path: str, chunks, model_cfg) -> None:
    """Model weights only from any checkpoint (full or release, or a Megatron-LM torch_dist
    checkpoint of the same architecture) into unwrapped chunks."""
    store.check_loadable(path)
    check_model_matches(path, model_cfg)
    store.load_weights(path, chunks)


def load_full(path: str, chunks, optimizer, scheduler, load_optim: bool = True,
              load_rng: bool = True) -> dict:
    """Restore model, optimizer, scheduler and (at the same layout) RNG; returns the common state.

    load_optim=False keeps the fresh optimizer (--no-load-optim); load_rng=False keeps the
    seeded RNG (--no-load-rng)."""
    rundir.check_complete(path)
    common = common_state(path)
    if common.get("kind") != "full":
        raise rundir.CheckpointError(
            f"{path} is a weights-only checkpoint: start a stage from it with --init-from, "
            "it cannot be resumed"
        )
    with_rng = load_rng and common.get("layout") == layout()
    sd = _full_state_dict(chunks, optimizer if load_optim else None, is_loading=True, with_rng=with_rng)
    loaded = store.load(sd, path)
    store.set_model(chunks, loaded)
    if load_optim:
        optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(common["scheduler"])
    if with_rng:
        set_rng_state(loaded["rng_state"])
    return common


def load_optimizer_state(path: str, chunks, optimizer) -> dict:
    """Model and optimizer state of a full checkpoint, and nothing else: the start of a stage that
    carries the previous stage's optimizer (--handover-optimizer carry). Returns the common state.

    Every stage has the same parameters and checkpoint keys, so Adam's moments and step counts
    (and with bf16 the fp32 main weights) load as they were saved. The parameter groups keep
    this stage's hyperparameters (learning rates, weight decay: the checkpoint's would be the
    previous stage's), and the scheduler, step and RNG are left as the caller made them."""
    rundir.check_complete(path)
    common = common_state(path)
    if common.get("kind") != "full":
        raise rundir.CheckpointError(
            f"--handover-optimizer carry needs the previous stage's full checkpoint (with its optimizer "
            f"state), but {path} holds weights only: start from the stage's checkpoint directory "
            "(e.g. SAVE/patch) instead of its _weights copy, or use --handover-optimizer reset"
        )
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    loaded = store.load(_full_state_dict(chunks, optimizer, is_loading=True, with_rng=False), path)
    store.set_model(chunks, loaded)
    optimizer.load_state_dict(loaded["optimizer"])
    for group, own in zip(optimizer.param_groups, hyper):
        group.update(own)
    return common
