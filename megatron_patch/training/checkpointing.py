"""Checkpoints in Megatron's layout, written with megatron-core `dist_checkpointing` (torch_dist).

    CKPT_DIR/iter_0000020/          one checkpoint (sharded tensors + common state + config.yaml)
    CKPT_DIR/release/               a weights-only checkpoint (tools/convert_checkpoint.py --to token)
    CKPT_DIR/latest_checkpointed_iteration.txt   "20" or "release"

A checkpoint becomes visible only when complete: every rank finishes writing, then rank 0
replaces the pointer file through a temp file + rename. A crash mid-save leaves the previous
pointer (and so the previous checkpoint) in place.

Contents of a full checkpoint: model weights (`model` or `model0..`), optimizer
(`optimizer.*`, DistributedOptimizer state saved `fully_reshardable`), and in the common state
the LR scheduler, the `TrainState` (step, data position, accounting), the stage and the layout
it was saved at, plus the per-rank RNG states. Tensors carry global shapes, so a checkpoint
loads at any TP/PP/DP; RNG states are restored only at the layout they were saved at.
"""
import os
import random
import shutil
from typing import Optional

import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject

from megatron_patch.compat import use_in_process_results_queue
from megatron_patch.training.config import RunConfig, config_from_dict, load_yaml, to_yaml

TRACKER = "latest_checkpointed_iteration.txt"
CONFIG_FILE = "config.yaml"
RELEASE = "release"
FORMAT_VERSION = 1
OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, unreadable or does not fit the model."""


# ----------------------------------------------------------------------------- paths


def read_tracker(ckpt_dir: str) -> Optional[str]:
    """The latest checkpoint's sub-directory name ("iter_0000020" / "release"), None if none."""
    path = os.path.join(ckpt_dir, TRACKER)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        text = f.read().strip()
    if text == RELEASE:
        return RELEASE
    if not text.isdigit():
        raise CheckpointError(f"{path} holds {text!r}, not an iteration number or 'release'")
    return f"iter_{int(text):07d}"


def latest_checkpoint(ckpt_dir: str) -> Optional[str]:
    """Path of the newest complete checkpoint in ckpt_dir, or None when ckpt_dir has none."""
    name = read_tracker(ckpt_dir)
    if name is None:
        return None
    path = os.path.join(ckpt_dir, name)
    check_complete(path)
    return path


def require_checkpoint(ckpt_dir: str) -> str:
    """Like latest_checkpoint, but a missing checkpoint is an error that says what to pass."""
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"checkpoint directory {ckpt_dir} does not exist")
    path = latest_checkpoint(ckpt_dir)
    if path is None:
        raise CheckpointError(
            f"{ckpt_dir} has no {TRACKER}: not a checkpoint directory, or no checkpoint was "
            "completed there (pass the directory that holds iter_*/ or release/)"
        )
    return path


def check_complete(path: str) -> None:
    """Raise CheckpointError unless `path` has everything a finished save writes."""
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} named by {TRACKER} does not exist")
    needed = ["metadata.json", "common.pt", ".metadata", CONFIG_FILE]
    missing = [n for n in needed if not os.path.isfile(os.path.join(path, n))]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete or corrupted: missing {missing}")
    if not any(n.endswith(".distcp") for n in os.listdir(path)):
        raise CheckpointError(f"checkpoint {path} is incomplete or corrupted: no tensor shards")


def checkpoint_config(path: str) -> RunConfig:
    """The resolved run config saved beside a checkpoint."""
    try:
        return config_from_dict(load_yaml(os.path.join(path, CONFIG_FILE)))
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path}: unreadable {CONFIG_FILE} ({err})") from None


def common_state(path: str) -> dict:
    """The non-tensor part of a checkpoint (train state, scheduler, stage, layout), no tensors read."""
    try:
        return dist_checkpointing.load_common_state_dict(path)
    except Exception as err:  # torch.load errors on a truncated/garbled common.pt
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}: {err})") from None


# ----------------------------------------------------------------------------- state dicts


def _dp_rank_size():
    return (parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size())


def layout() -> dict:
    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
    }


def model_sharded_state_dict(chunks) -> dict:
    """{"model": ...} or {"model0": ..., "model1": ...} for virtual pipeline chunks (unwrapped)."""
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}


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


def _barrier():
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _rank0() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    weights_only = optimizer is None
    name = RELEASE if weights_only else f"iter_{train_state.step:07d}"
    path = os.path.join(ckpt_dir, name)
    if _rank0():
        if os.path.exists(path):  # a leftover of a crashed save, or re-saving the same step
            shutil.rmtree(path)
        os.makedirs(path)
    _barrier()
    sd = _full_state_dict(chunks, optimizer, is_loading=False, with_rng=not weights_only)
    sd["kind"] = "weights" if weights_only else "full"
    sd["format_version"] = FORMAT_VERSION
    if not weights_only:
        sd["scheduler"] = scheduler.state_dict()
        sd["train_state"] = train_state.to_dict()
        sd["stage"] = stage.to_dict()
        sd["layout"] = layout()
    use_in_process_results_queue()  # synchronous save: no spawned Manager (compat/)
    dist_checkpointing.save(sd, path, sharded_strategy=("torch_dist", 1))
    if _rank0():
        _write_atomic(os.path.join(path, CONFIG_FILE), to_yaml(cfg))
    _barrier()
    if _rank0():  # the pointer goes last: only now is the checkpoint visible
        _write_atomic(os.path.join(ckpt_dir, TRACKER), RELEASE if weights_only else str(train_state.step))
    _barrier()
    return path


# ----------------------------------------------------------------------------- load


def check_model_matches(path: str, model_cfg) -> None:
    """The saved architecture must equal `model_cfg` (fields set to None are not compared)."""
    saved = checkpoint_config(path).model

    def arch(m):
        return {"num_layers": m.num_layers, "hidden_size": m.hidden_size,
                "ffn_hidden_size": m.ffn_hidden_size, "num_attention_heads": m.num_attention_heads,
                "num_query_groups": m.num_query_groups or m.num_attention_heads,
                "vocab_size": m.vocab_size, "tie_embeddings": m.tie_embeddings}

    have, want = arch(saved), arch(model_cfg)
    diff = {f: (have[f], want[f]) for f in want if want[f] is not None and have[f] != want[f]}
    if diff:
        pretty = ", ".join(f"{k}: checkpoint {a} vs requested {b}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"checkpoint {path} was saved for a different model ({pretty}); "
            "use the same --model / tokenizer as the run that saved it"
        )


def _load(sd: dict, path: str) -> dict:
    try:
        return dist_checkpointing.load(sd, path)
    except CheckpointError:
        raise
    except BaseException as err:  # torch.distributed.checkpoint's CheckpointException is a BaseException
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            raise
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        reason = lines[-1] if lines else ""
        raise CheckpointError(
            f"failed to read checkpoint {path} ({type(err).__name__}: {reason[:300]}); it is "
            "corrupted, incomplete, or does not fit this model"
        ) from err


def _set_model(chunks, loaded: dict) -> None:
    for i, chunk in enumerate(chunks):
        key = "model" if len(chunks) == 1 else f"model{i}"
        chunk.load_state_dict(loaded[key], strict=True)


def load_weights(path: str, chunks, model_cfg) -> None:
    """Model weights only from any checkpoint (full or release) into unwrapped chunks."""
    check_complete(path)
    check_model_matches(path, model_cfg)
    _set_model(chunks, _load(model_sharded_state_dict(chunks), path))


def load_full(path: str, chunks, optimizer, scheduler) -> dict:
    """Restore model, optimizer, scheduler and (at the same layout) RNG; returns the common state."""
    check_complete(path)
    common = common_state(path)
    if common.get("kind") != "full":
        raise CheckpointError(
            f"{path} is a weights-only checkpoint: start a stage from it with --init-from, "
            "it cannot be resumed"
        )
    same_layout = common.get("layout") == layout()
    sd = _full_state_dict(chunks, optimizer, is_loading=True, with_rng=same_layout)
    loaded = _load(sd, path)
    _set_model(chunks, loaded)
    optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(common["scheduler"])
    if same_layout:
        set_rng_state(loaded["rng_state"])
    return common
