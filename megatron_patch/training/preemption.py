"""Leaving a run early and cleanly: on a signal, at a wall-clock limit or at a step count.

    --exit-signal-handler [--exit-signal SIGUSR1]   the signal (SLURM's warning before the time
                                                    limit, a preemption) ends the run
    --exit-duration-in-mins M                       this launch's wall-clock budget, counted
                                                    from the process's start
    --exit-interval N                               stop when the stage's step is a multiple of N

Every rank finishes its current step; the ranks agree (one all-reduce per step, only when one of
the options is on), then one checkpoint is saved and the process exits with EXIT_CODE. A relaunch
with --load continues exactly where it stopped. The signal handler only sets a flag: nothing is
interrupted mid-step, mid-evaluation or mid-save.
"""
import os
import re
import signal
import time
from typing import Optional

import torch

from megatron_patch import device

EXIT_CODE = 3
"""Exit status of a run that stopped early after saving (relaunch with --load to continue)."""

SHUTDOWN_TIMEOUT_TORCH = (2, 12)
"""The first torch whose torchrun waits TORCH_ELASTIC_SHUTDOWN_TIMEOUT (--shutdown-timeout) after
forwarding a signal to its workers; older torchrun kills them 30 s after the signal."""

_grace_noted = False


def signal_grace_note(torch_version: Optional[str] = None, env=None) -> Optional[str]:
    """The line that says a signal-driven save has 30 s: under torchrun of torch < 2.12 (None
    elsewhere, or when the version cannot be read)."""
    env = os.environ if env is None else env
    if "TORCHELASTIC_RUN_ID" not in env:
        return None  # not under torchrun: nothing kills the workers after a grace
    version = torch_version or torch.__version__
    match = re.match(r"(\d+)\.(\d+)", version)
    if not match or (int(match[1]), int(match[2])) >= SHUTDOWN_TIMEOUT_TORCH:
        return None
    return (f"note: torch {version}: after a signal (SIGTERM, e.g. a preemption) torchrun kills the "
            f"workers 30 s later (TORCH_ELASTIC_SHUTDOWN_TIMEOUT and --shutdown-timeout need torch "
            f">= {SHUTDOWN_TIMEOUT_TORCH[0]}.{SHUTDOWN_TIMEOUT_TORCH[1]}): a signal-driven save must fit "
            f"in 30 s; for time limits use --exit-duration-in-mins, which needs no signal")


def process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 where that cannot be read), so that
    --exit-duration-in-mins counts the imports and setup before the trainer, as a job's time
    limit does."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = float(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class ExitRequested(Exception):
    """Raised by the trainer after the exit checkpoint is saved; carries the reason and the path."""

    def __init__(self, reason: str, checkpoint: str):
        super().__init__(f"{reason}: saved {checkpoint}; relaunch with --load to continue")
        self.reason = reason
        self.checkpoint = checkpoint


class ExitPolicy:
    """Decides, the same on every rank, whether the run stops after the current step."""

    def __init__(self, train_cfg):
        self.signal_name = train_cfg.exit_signal if train_cfg.exit_signal_handler else None
        self.duration_s = (train_cfg.exit_duration_in_mins * 60.0
                           if train_cfg.exit_duration_in_mins is not None else None)
        self.interval = train_cfg.exit_interval
        self.start = time.monotonic() - process_age()  # the launch's clock: imports and setup count
        self.received: Optional[int] = None
        self._previous = None
        if self.signal_name:
            signum = getattr(signal, self.signal_name)
            self._previous = (signum, signal.signal(signum, self._on_signal))
            _note_signal_grace()

    @property
    def active(self) -> bool:
        return bool(self.signal_name or self.duration_s or self.interval)

    def _on_signal(self, signum, frame) -> None:
        self.received = signum

    def reason(self, step: Optional[int]) -> Optional[str]:
        """Why to stop after `step` of the current stage (None: go on; step None: between
        stages, where only the signal and the clock count). A collective when active."""
        if not self.active:
            return None
        local = 0.0
        if self.received is not None:
            local = 1.0
        elif self.duration_s is not None and time.monotonic() - self.start >= self.duration_s:
            local = 2.0
        flag = torch.tensor([local], device=device.current())
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        code = int(flag.item())
        if code == 1:
            return f"received {self.signal_name}"
        if code == 2:
            return f"--exit-duration-in-mins {self.duration_s / 60:g} reached"
        if self.interval and step is not None and step % self.interval == 0:
            return f"--exit-interval {self.interval} reached at step {step}"
        return None

    def close(self) -> None:
        """Restore the previous signal handler."""
        if self._previous is not None:
            signal.signal(*self._previous)
            self._previous = None


def _note_signal_grace() -> None:
    """Print signal_grace_note() once per process, on global rank 0."""
    global _grace_noted
    if _grace_noted:
        return
    _grace_noted = True
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    note = signal_grace_note()
    if note and rank == 0:
        print(note, flush=True)
