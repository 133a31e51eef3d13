"""A run directory belongs to one run.

- `check_launch(cfg)` (every rank, before anything is written): a --save that already holds a
  run is used only with --load (resume); --load must name a run or checkpoint of this product.
- `RunLock` (global rank 0, for the life of the run): a second live launch on the same run
  directory fails at once instead of interleaving checkpoints and metrics. The lock is an
  advisory `flock` on SAVE/.lock, released by the kernel when the process dies, even by kill -9.
"""
import fcntl
import json
import os
import sys
import time

from megatron_patch import io
from megatron_patch.training import rundir


def _same(a: str, b: str) -> bool:
    return bool(a) and bool(b) and os.path.realpath(a) == os.path.realpath(b)


def check_launch(cfg) -> None:
    """Refuse a launch that would overwrite another run or start from something unknown."""
    c = cfg.checkpoint
    save, load = c.save, c.load
    if save and rundir.holds_run(save) and not _same(load, save):
        raise ValueError(
            f"--save {save} already holds a run (checkpoints or metrics); nothing was changed. "
            f"To continue it, relaunch with --load {save}. To start a new run, pass a new --save "
            "directory (or delete this one yourself first)"
        )
    if load:
        if _same(load, save) and not rundir.holds_run(save):
            return  # `--save D --load D` on a first launch: nothing to resume yet
        if not os.path.exists(load):
            raise ValueError(f"--load {load} does not exist: pass the run directory of an earlier "
                             "launch (its --save), or leave --load out to start a new run")
        if not (rundir.holds_run(load) or rundir.is_checkpoint_dir(load)):
            raise ValueError(
                f"--load {load} is not a run directory or checkpoint directory of this product "
                f"(no {rundir.TRACKER}, no stage checkpoints, no {rundir.METRICS_FILE}); pass the "
                "--save directory of the run to resume, or use --init-from for weights"
            )


class RunLock:
    """Holds SAVE/.lock exclusively while the run lives (rank 0 only)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self._fd = None

    def acquire(self) -> None:
        os.makedirs(self.run_dir, exist_ok=True)
        fd = os.open(rundir.lock_path(self.run_dir), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with open(fd, closefd=True) as f:
                holder = f.read().strip()
            raise ValueError(
                f"{self.run_dir} is in use by a live run ({holder or 'another process'}); wait for "
                "it to end or stop it, or pass another --save") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode())
        self._fd = fd
        if not os.path.exists(rundir.run_file(self.run_dir)):
            io.write_json(rundir.run_file(self.run_dir), {
                "product": "megatron-patch", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "argv": sys.argv})

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
