"""What happens when a step's loss or gradient norm is NaN/Inf.

The train step (step.py) withholds such an update on every rank before the optimizer touches
the weights. Then, by default, the run stops with `Diverged`: a message naming the stage, the
step and the last good checkpoint, and a non-zero exit; nothing is saved after the bad step.
With --skip-bad-steps N the run goes on past up to N such steps (counted over the stage, across
resumes), each reported in the log, and stops at the next one.
"""
import math


class Diverged(RuntimeError):
    """The run met more non-finite steps than --skip-bad-steps allows."""


class DivergenceGuard:
    def __init__(self, allowed: int, logger):
        self.allowed = allowed
        self.logger = logger

    def check(self, result, stage, state, last_checkpoint) -> None:
        """Count the withheld update of `state.step` (already advanced) or raise Diverged."""
        state.skipped_steps += 1
        what = ", ".join(f"{name} {value}" for name, value in
                         (("loss", result.loss), ("grad norm", result.grad_norm)) if not math.isfinite(value))
        if state.skipped_steps <= self.allowed:
            self.logger.print(
                f"{stage.name} stage step {state.step}: {what or 'overflow'}; update skipped "
                f"({state.skipped_steps} of --skip-bad-steps {self.allowed})")
            return
        resume = (f"the last good checkpoint is {last_checkpoint}" if last_checkpoint
                  else "this stage has no checkpoint yet")
        raise Diverged(
            f"{stage.name} stage (K={stage.patch_size}) step {state.step}: {what or 'overflow'}; "
            "the update was not applied and nothing was saved. Training diverged: "
            f"{resume}. Lower --lr, raise --lr-warmup-iters or check the data, then relaunch with "
            "--load; --skip-bad-steps N tolerates N isolated bad steps"
        )
