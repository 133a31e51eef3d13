"""The layout of a run directory: the only module that knows it (a checkpoint directory's own
layout is megatron_patch/checkpoint/layout.py's, re-exported here).

    SAVE/                              a run of tools/pretrain.py (--save)
      patch/  token/                   one checkpoint directory per stage (named after the stage)
      patch_weights/                   the patch stage's final weights, the token stage's start
      patch_k4/ patch_k2/ ...          with --patch-schedule: one directory per patch stage
      patch_k4_weights/ ...            (and its weights), named after its K
      metrics.jsonl  compute.json      metrics records; the compute account (written last)
      tensorboard/  run.json  .lock    TensorBoard events; what the run is; the live-run lock

    CKPT_DIR/                          a checkpoint directory (Megatron's layout)
      iter_0000020/                    one checkpoint: tensors, common state, config.yaml
      release/                         a weights-only checkpoint
      latest_checkpointed_iteration.txt   "20" or "release": written last, after every rank saved

Nothing here imports torch: analysis code and the CLIs read runs through these functions too.
"""
import os
import re
from typing import List

# The checkpoint directory's layout is megatron_patch/checkpoint/layout.py's (below training/ and
# export/); its names are re-exported here so run-directory code reads one module.
from megatron_patch.checkpoint.layout import (  # noqa: F401
    CONFIG_FILE, RELEASE, TRACKER, CheckpointError, check_complete, checkpoint_root, is_checkpoint_dir,
    iteration_name, latest_checkpoint, read_tracker, require_checkpoint, tracker_text,
)

METRICS_FILE = "metrics.jsonl"
COMPUTE_FILE = "compute.json"
RUN_FILE = "run.json"
LOCK_FILE = ".lock"
TENSORBOARD_DIR = "tensorboard"
STAGE_NAMES = ("patch", "token")
"""The stages of the one-patch-stage recipe, in order; a K schedule names its patch stages
`patch_k<K>` (see patch_stage_name)."""
_SCHEDULED = re.compile(r"patch_k(\d+)")


# ----------------------------------------------------------------------------- run directory


def patch_stage_name(patch_size: int, scheduled: bool) -> str:
    """"patch" for the one patch stage of the paper's recipe; "patch_k4" for the K=4 stage of a
    K schedule (--patch-schedule), whose K are distinct."""
    return f"patch_k{patch_size}" if scheduled else "patch"


def is_stage_name(name: str) -> bool:
    """Whether `name` is a stage's checkpoint directory name (not a `_weights` directory)."""
    return name in STAGE_NAMES or _SCHEDULED.fullmatch(name) is not None


def stage_kind(name: str) -> str:
    """"patch" for every patch stage ("patch", "patch_k4", ...), else the name ("token")."""
    return "patch" if name == "patch" or _SCHEDULED.fullmatch(name) else name


def _training_order(name: str) -> tuple:
    # The one patch stage, then a schedule's stages by decreasing K (the order it trains them:
    # the config requires decreasing K), then the token stage.
    m = _SCHEDULED.fullmatch(name)
    return (0, 0) if name == "patch" else (1, -int(m.group(1))) if m else (2, 0)


def stage_names(run_dir: str) -> List[str]:
    """The stages that have a checkpoint directory in `run_dir`, in training order."""
    if not os.path.isdir(run_dir):
        return []
    names = [d for d in os.listdir(run_dir) if is_stage_name(d) and is_checkpoint_dir(os.path.join(run_dir, d))]
    return sorted(names, key=_training_order)


def stage_dir(run_dir: str, stage: str) -> str:
    """Checkpoint directory of a stage (`stage` is the stage's name)."""
    return os.path.join(run_dir, stage)


def weights_dir(run_dir: str, stage: str) -> str:
    """Where a stage's final checkpoint is converted to weights only (the next stage's start)."""
    return os.path.join(run_dir, f"{stage}_weights")


def metrics_path(run_dir: str) -> str:
    return os.path.join(run_dir, METRICS_FILE)


def compute_path(run_dir: str) -> str:
    return os.path.join(run_dir, COMPUTE_FILE)


def run_file(run_dir: str) -> str:
    return os.path.join(run_dir, RUN_FILE)


def lock_path(run_dir: str) -> str:
    return os.path.join(run_dir, LOCK_FILE)


def tensorboard_dir(run_dir: str) -> str:
    return os.path.join(run_dir, TENSORBOARD_DIR)


def is_finished(run_dir: str) -> bool:
    """A run is finished when its compute account exists (the trainer writes it last)."""
    return os.path.isfile(compute_path(run_dir))


def checkpoint_dirs(run_dir: str) -> List[str]:
    """Checkpoint directories (holding a pointer file) directly under a run directory."""
    if not os.path.isdir(run_dir):
        return []
    return sorted(os.path.join(run_dir, d) for d in os.listdir(run_dir)
                  if os.path.isfile(os.path.join(run_dir, d, TRACKER)))


def holds_run(run_dir: str) -> bool:
    """Whether a directory already holds (part of) a run of this product: a stage's checkpoints or
    hand-over weights, metrics, an account or the run file."""
    stages = [d for d in checkpoint_dirs(run_dir)
              if is_stage_name(os.path.basename(d).removesuffix("_weights"))]
    return bool(stages) or any(
        os.path.exists(p) for p in (metrics_path(run_dir), compute_path(run_dir), run_file(run_dir))
    )


# ----------------------------------------------------------------------------- checkpoints of a run


def resolve_checkpoint(path: str) -> str:
    """The checkpoint `path` names: a checkpoint directory (its latest), one iter_*/release
    directory, or a run directory (its last stage's latest checkpoint)."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    if is_checkpoint_dir(path):
        return require_checkpoint(path)
    saved = stage_names(path)  # a run directory: the last stage that saved
    if saved:
        return require_checkpoint(stage_dir(path, saved[-1]))
    if os.path.isfile(os.path.join(path, "metadata.json")) or os.path.isfile(os.path.join(path, CONFIG_FILE)):
        check_complete(path)
        return path
    return require_checkpoint(path)  # raises with the "no pointer" message
