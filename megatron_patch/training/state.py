"""`TrainState`: the loop's counters, saved in every checkpoint (lingua-style).

Together with model, optimizer, scheduler and RNG it is everything a resumed run needs: the
step, the data position (`consumed_samples`, global, so it is independent of the DP layout),
and the compute accounting of this stage and of the stages before it.
"""
from dataclasses import asdict, dataclass, field
from typing import List, Optional


@dataclass
class TrainState:
    stage: str
    """Name of the stage being trained."""
    patch_size: int
    """K of that stage."""
    step: int = 0
    """Optimizer steps completed in this stage."""
    consumed_samples: int = 0
    """Training samples of this stage consumed so far (all data-parallel ranks together)."""
    tokens: int = 0
    """Tokens trained on in this stage (K per patch)."""
    flops: float = 0.0
    """Model FLOPs of this stage (see flops.py)."""
    wall_s: float = 0.0
    """Seconds spent in training steps of this stage (evaluation and checkpointing excluded)."""
    val_loss: Optional[float] = None
    """Token-level validation loss at the end of the stage (set when the stage completes)."""
    val_ppl: Optional[float] = None
    """exp(val_loss)."""
    completed: bool = False
    """True in the checkpoint saved after the stage's last step: the stage may be handed over."""
    skipped_steps: int = 0
    """Steps whose update was withheld because the loss or gradient norm was not finite."""
    history: List[dict] = field(default_factory=list)
    """Accounts of the stages completed before this one: {stage, patch_size, steps, tokens,
    flops, wall_s, val_loss, val_ppl, settings}."""
    settings: dict = field(default_factory=dict)
    """The stage being trained as planned (`Stage.to_dict()`: K, steps, batch, data range and
    the recipe knobs: learning rates, warmup, optimizer carry, target weights, mean dtype)."""

    def advance(self, stage, flops: float, seconds: float) -> None:
        """Count one optimizer step of `stage` (applied or skipped: its data is consumed either way)."""
        self.step += 1
        self.consumed_samples += stage.global_batch_size
        self.tokens += stage.tokens_per_step
        self.flops += flops
        self.wall_s += seconds

    def account(self) -> dict:
        """This stage's account for compute.json."""
        return {"stage": self.stage, "patch_size": self.patch_size, "steps": self.step,
                "tokens": self.tokens, "flops": self.flops, "wall_s": self.wall_s,
                "val_loss": self.val_loss, "val_ppl": self.val_ppl, "settings": dict(self.settings)}

    def cumulative(self) -> dict:
        """Run-wide totals (all stages so far) for metrics.jsonl."""
        return {
            "tokens": self.tokens + sum(h["tokens"] for h in self.history),
            "flops": self.flops + sum(h["flops"] for h in self.history),
            "wall_s": self.wall_s + sum(h["wall_s"] for h in self.history),
        }

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(**d)

    @classmethod
    def from_checkpoint(cls, common: dict) -> "TrainState":
        """The TrainState in a checkpoint's common state (see checkpointing.common_state)."""
        return cls.from_dict(common["train_state"])
