"""Leaving a run early and cleanly: on a signal, at a wall-clock limit or at a step count.

    --exit-signal-handler [--exit-signal SIGUSR1]   the signal (SLURM's warning before the time
                                                    limit, a preemption) ends the run
    --exit-duration-in-mins M                       this launch's wall-clock budget
    --exit-interval N                               stop when the stage's step is a multiple of N

Every rank finishes its current step; the ranks agree (one all-reduce per step, only when one of
the options is on), then one checkpoint is saved and the process exits with EXIT_CODE. A relaunch
with --load continues exactly where it stopped. The signal handler only sets a flag: nothing is
interrupted mid-step, mid-evaluation or mid-save.
"""
import signal
import time
from typing import Optional

import torch

from megatron_patch import device

EXIT_CODE = 3
"""Exit status of a run that stopped early after saving (relaunch with --load to continue)."""


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
        self.start = time.monotonic()
        self.received: Optional[int] = None
        self._previous = None
        if self.signal_name:
            signum = getattr(signal, self.signal_name)
            self._previous = (signum, signal.signal(signum, self._on_signal))

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
