"""Checkpoints written and read with megatron-core `dist_checkpointing` (torch_dist).

A checkpoint becomes visible only when complete: every rank finishes writing, then rank 0
writes config.yaml and last replaces the pointer file through a temp file + rename
(megatron_patch/io.py). A crash mid-save leaves the previous pointer, and so the previous
checkpoint, in place. Tensors carry global shapes, so model weights load at any TP/PP.

Model weights are `model` (or `model0..` for virtual pipeline chunks); the common state holds
`kind` ("weights" or "full") and `format_version`, plus whatever the writer adds (a training
checkpoint: training/checkpointing.py).
"""
import os
import shutil
from typing import Optional

import torch
from megatron.core import dist_checkpointing

from megatron_patch import io
from megatron_patch.checkpoint import layout
from megatron_patch.checkpoint.architecture import megatron_lm_args
from megatron_patch.checkpoint.layout import TE_NORM_NAMES, CheckpointError
from megatron_patch.compat import use_in_process_results_queue

FORMAT_VERSION = 1


def common_state(path: str) -> dict:
    """The non-tensor part of a checkpoint (train state, scheduler, stage, layout), no tensors read."""
    try:
        return dist_checkpointing.load_common_state_dict(path)
    except Exception as err:  # torch.load errors on a truncated/garbled common.pt
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}: {err})") from None


def model_sharded_state_dict(chunks) -> dict:
    """{"model": ...} or {"model0": ..., "model1": ...} for virtual pipeline chunks (unwrapped)."""
    if len(chunks) == 1:
        return {"model": chunks[0].sharded_state_dict()}
    return {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}


# ----------------------------------------------------------------------------- save


def _barrier():
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _rank0() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def save(ckpt_dir: str, sd: dict, config_yaml: str, step: Optional[int] = None) -> str:
    """Save the state dict `sd` (all ranks) as CKPT_DIR/iter_<step>, or CKPT_DIR/release when
    `step` is None, with `config_yaml` beside it; the pointer goes last. Returns the path."""
    path = os.path.join(ckpt_dir, layout.RELEASE if step is None else layout.iteration_name(step))
    if _rank0():
        if os.path.exists(path):  # a leftover of a crashed save, or re-saving the same step
            shutil.rmtree(path)
        os.makedirs(path)
    _barrier()
    use_in_process_results_queue()  # synchronous save: no spawned Manager (compat/)
    dist_checkpointing.save(sd, path, sharded_strategy=("torch_dist", 1))
    if _rank0():
        io.write_text(os.path.join(path, layout.CONFIG_FILE), config_yaml)
    _barrier()
    if _rank0():  # the pointer goes last: only now is the checkpoint visible
        io.write_text(os.path.join(ckpt_dir, layout.TRACKER), layout.tracker_text(step))
    _barrier()
    return path


def save_weights(ckpt_dir: str, chunks, config_yaml: str) -> str:
    """A weights-only release checkpoint of unwrapped `chunks` at CKPT_DIR/release (all ranks)."""
    sd = model_sharded_state_dict(chunks)
    sd["kind"] = "weights"
    sd["format_version"] = FORMAT_VERSION
    return save(ckpt_dir, sd, config_yaml)


# ----------------------------------------------------------------------------- load


def check_loadable(path: str) -> None:
    """CheckpointError unless `path` holds a whole save: ours (config.yaml beside it, the pointer
    layout's files) or a Megatron-LM torch_dist checkpoint (its args in common.pt)."""
    if os.path.isfile(os.path.join(path, layout.CONFIG_FILE)) or megatron_lm_args(path) is None:
        layout.check_complete(path)
    else:
        _check_shards(path)


def load(sd: dict, path: str) -> dict:
    """dist_checkpointing.load with an error that names the checkpoint and the reason."""
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


def set_model(chunks, loaded: dict) -> None:
    for i, chunk in enumerate(chunks):
        key = "model" if len(chunks) == 1 else f"model{i}"
        chunk.load_state_dict(loaded[key], strict=True)


def load_weights(path: str, chunks) -> None:
    """Model weights only from any checkpoint (full or release, or a Megatron-LM torch_dist
    checkpoint) into unwrapped chunks, with errors that say which tensor does not fit. The
    architecture is not compared here (training/checkpointing.py's load_weights does that)."""
    check_loadable(path)
    sd = model_sharded_state_dict(chunks)
    fit_to_saved(sd, path)
    set_model(chunks, load(sd, path))


def _check_shards(path: str) -> None:
    """A Megatron-LM checkpoint (no config.yaml) must still hold a whole torch_dist save."""
    missing = [n for n in ("metadata.json", "common.pt", ".metadata") if not os.path.isfile(os.path.join(path, n))]
    if missing or not any(n.endswith(".distcp") for n in os.listdir(path)):
        raise CheckpointError(f"checkpoint {path} is incomplete or corrupted: missing {missing or 'tensor shards'}")


def fit_to_saved(sd: dict, path: str) -> None:
    """Match the requested tensors to the saved ones by name and global shape, with errors that
    say what differs. Norm weights are found under either layout (TE_NORM_NAMES)."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    try:
        saved = dist_checkpointing.load_tensors_metadata(path)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path}: unreadable tensor metadata ({type(err).__name__}: "
                              f"{str(err)[:300]}); it is corrupted or incomplete") from None
    other = {**{f"decoder.layers.{v}": f"decoder.layers.{k}" for k, v in TE_NORM_NAMES.items()},
             **{f"decoder.layers.{k}": f"decoder.layers.{v}" for k, v in TE_NORM_NAMES.items()}}
    problems = []
    for t in nested_values(sd):
        if not isinstance(t, (ShardedTensor, ShardedTensorFactory)):
            continue
        if t.key not in saved and other.get(t.key) in saved:
            t.key = other[t.key]
        if t.key not in saved:
            problems.append(f"no tensor {t.key!r}")
        elif isinstance(t, ShardedTensor) and tuple(saved[t.key].global_shape) != tuple(t.global_shape):
            have, want = tuple(saved[t.key].global_shape), tuple(t.global_shape)
            hint = ""
            if t.key in ("embedding.word_embeddings.weight", "output_layer.weight"):
                hint = (" (vocabulary rows: the model pads vocab_size to a multiple of "
                        "make_vocab_size_divisible_by x TP; make both agree, e.g. "
                        "--make-vocab-size-divisible-by as in the checkpoint's config, and use its tokenizer)")
            problems.append(f"{t.key}: checkpoint {have} vs model {want}{hint}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit this model: " + "; ".join(problems[:6])
                              + (f" (+{len(problems) - 6} more)" if len(problems) > 6 else ""))
