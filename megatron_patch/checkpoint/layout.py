"""The layout of a checkpoint directory (Megatron's): the only module that knows it.

    CKPT_DIR/                          a checkpoint directory
      iter_0000020/                    one checkpoint: tensors, common state, config.yaml
      release/                         a weights-only checkpoint
      latest_checkpointed_iteration.txt   "20" or "release": written last, after every rank saved

and the names of tensors that differ between layer implementations (TE_NORM_NAMES).

The layout of a run directory (its stages' checkpoint directories) is training/rundir.py's,
which re-exports these names. Nothing here imports torch.
"""
import os
from typing import Optional

TRACKER = "latest_checkpointed_iteration.txt"
RELEASE = "release"
CONFIG_FILE = "config.yaml"
# Tensor names within a layer. megatron-core's local spec saves the layer norms under Transformer
# Engine's names (its sharded_state_dict_keys_map), so local, sdpa and TE models share one
# layout; a checkpoint written without that map keeps the local names. {local name: TE name}.
TE_NORM_NAMES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, unreadable or does not fit the model."""


def is_checkpoint_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, TRACKER))


def iteration_name(step: int) -> str:
    return f"iter_{step:07d}"


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
    return iteration_name(int(text))


def tracker_text(step: Optional[int]) -> str:
    """What the pointer file holds: the step, or "release" for weights only (step None)."""
    return RELEASE if step is None else str(step)


def check_complete(path: str) -> None:
    """Raise CheckpointError unless `path` has everything a finished torch_dist save writes.

    config.yaml (ours, beside every checkpoint of this product) is not required here: a
    Megatron-LM checkpoint has its arguments in the common state instead."""
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} named by {TRACKER} does not exist")
    needed = ["metadata.json", "common.pt", ".metadata"]
    missing = [n for n in needed if not os.path.isfile(os.path.join(path, n))]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete or corrupted: missing {missing}")
    if not any(n.endswith(".distcp") for n in os.listdir(path)):
        raise CheckpointError(f"checkpoint {path} is incomplete or corrupted: no tensor shards")


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


def checkpoint_root(path: str) -> str:
    """The checkpoint directory that holds checkpoint `path` (itself if it has the pointer)."""
    parent = os.path.dirname(os.path.abspath(path))
    return parent if is_checkpoint_dir(parent) else path
