"""Where a stage of a run stands: not started, step N of M, or complete.

    python tools/run_status.py runs/370m --stage patch
    patch stage: step 1200 of 45776, not complete (runs/370m/patch/iter_0001200)
    patch weights: absent (runs/370m/patch_weights)

Exit status: 0 the stage is complete (its last checkpoint was saved after its last step), 1 it is
not (not started, or started and unfinished; also a latest checkpoint that cannot be read), 2 a
bad argument (the path is not a run directory of tools/pretrain.py), 3 it stopped early on
purpose (--exit-signal-handler, --exit-duration-in-mins, --exit-interval) and saved: continue it
with --load. Batch scripts use it to
decide whether a stage is done, whether to continue it, and whether to hand it over
(examples/slurm/). Nothing is written; torch is imported only when there is a checkpoint to read.
"""
import argparse
import os
import sys
import warnings
from typing import Optional, Tuple

from megatron_patch.training import rundir  # no torch: the layout only

COMPLETE, NOT_COMPLETE, BAD_ARGUMENT, STOPPED_EARLY = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_status.py", description=__doc__.split("\n")[0])
    p.add_argument("save", metavar="SAVE", help="run directory (the --save of tools/pretrain.py)")
    p.add_argument("--stage", required=True,
                   help="the stage to report on: patch, token, or a K schedule's patch_k<K>")
    return p


def _patch_weights_line(save: str) -> str:
    """Whether the hand-over checkpoint (the last patch stage's weights, the token stage's start)
    exists."""
    patch_stages = [n for n in rundir.stage_names(save) if rundir.stage_kind(n) == "patch"] or ["patch"]
    path = rundir.weights_dir(save, patch_stages[-1])
    return f"patch weights: {'present' if rundir.is_checkpoint_dir(path) else 'absent'} ({path})"


def stage_state(save: str, stage: str) -> Tuple[int, str]:
    """(exit status, one line) for `stage` of run directory `save`."""
    if not os.path.isdir(save):
        what = "does not exist" if not os.path.exists(save) else "is not a directory"
        return BAD_ARGUMENT, f"{save} {what}: pass the run directory (the --save of tools/pretrain.py)"
    if rundir.is_checkpoint_dir(save):
        return BAD_ARGUMENT, (f"{save} is a checkpoint directory, not a run directory: pass the run "
                              f"directory that holds it ({os.path.dirname(os.path.abspath(save))})")
    ckpt_dir = rundir.stage_dir(save, stage)
    try:
        path: Optional[str] = rundir.latest_checkpoint(ckpt_dir)
    except rundir.CheckpointError as err:
        return NOT_COMPLETE, f"{stage} stage: not complete, its latest checkpoint is unusable: {err}"
    if path is None:
        started = "no run yet" if not rundir.holds_run(save) else f"no checkpoint in {ckpt_dir}"
        return NOT_COMPLETE, f"{stage} stage: not started ({started})"

    with warnings.catch_warnings():  # optional GPU extras missing: not this tool's business
        warnings.simplefilter("ignore")
        from megatron_patch.training.checkpointing import common_state, completed
        from megatron_patch.training.state import TrainState

    try:
        common = common_state(path)
        done = completed(path)
    except rundir.CheckpointError as err:
        return NOT_COMPLETE, f"{stage} stage: not complete, its latest checkpoint is unusable: {err}"
    if done is None:
        return BAD_ARGUMENT, (f"{path} is not a training checkpoint of tools/pretrain.py (weights only, "
                              f"or another tool's): {save} is not a run directory of this product")
    step = TrainState.from_checkpoint(common).step
    total = common.get("stage", {}).get("train_iters", "?")
    if done:
        return COMPLETE, f"{stage} stage: complete, step {step} of {total} ({path})"
    stop = _early_stop(save, stage, step)
    if stop is not None:
        return STOPPED_EARLY, (f"{stage} stage: step {step} of {total}, stopped early ({stop['reason']}) "
                               f"after saving {path}; continue it with --load")
    return NOT_COMPLETE, f"{stage} stage: step {step} of {total}, not complete ({path})"


def _early_stop(save: str, stage: str, step: int) -> Optional[dict]:
    """The trainer's "exit" record for this stage's latest checkpoint, if the run stopped on purpose."""
    from megatron_patch.training.metrics import MetricsError, read_metrics

    try:
        records = [r for r in read_metrics(save) if r.get("stage") == stage]
    except MetricsError:
        return None
    last = records[-1] if records else None
    return last if last and last.get("kind") == "exit" and last.get("step") == step else None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not rundir.is_stage_name(args.stage):
        print(f"run_status.py: error: --stage {args.stage!r} is not a stage name (patch, token, "
              "patch_k<K>)", file=sys.stderr)
        return BAD_ARGUMENT
    status, line = stage_state(args.save, args.stage)
    if status == BAD_ARGUMENT:
        print(f"run_status.py: error: {line}", file=sys.stderr)
        return status
    print(line)
    print(_patch_weights_line(args.save))
    return status


if __name__ == "__main__":
    sys.exit(main())
