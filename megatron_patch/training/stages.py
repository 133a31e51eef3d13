"""The paper's recipe as data: a run is a list of `Stage`s, and K = 1 is the token stage.

Budget (DESIGN.md): N steps of B = global_batch_size * seq_length tokens. The patch stage
consumes the first lambda of the data, lambda*N*B tokens, at K tokens per position; the token
stage consumes the rest, (1 - lambda)*N steps. A patch-stage sample has patch_seq_length tokens,
by default K*seq_length: the same T transformer positions as a token-stage sample (the paper:
2048 patches = 8192 tokens). With the default `same_tokens` policy the patch stage also has B
tokens per step (B / patch_seq_length sequences: K times fewer), so it runs lambda*N steps; with
`same_sequences` it has global_batch_size sequences per step and correspondingly fewer steps.
Each stage has its own optimizer, LR schedule (warmup + decay over its own steps) and data range.
"""
import math
from dataclasses import asdict, dataclass
from typing import List, Tuple

from megatron_patch.config import validate_for


@dataclass(frozen=True)
class Stage:
    """One training stage; the loop knows nothing else about patches."""

    name: str
    """"patch" or "token"; also the checkpoint sub-directory and the metrics `stage` field."""
    patch_size: int
    """K for this stage (1 = token-level)."""
    train_iters: int
    """Optimizer steps in this stage (its LR schedule decays over them)."""
    global_batch_size: int
    """Sequences per step."""
    micro_batch_size: int
    """Sequences per forward pass per data-parallel rank."""
    seq_length: int
    """Tokens per sample (T*K)."""
    train_range: Tuple[float, float]
    """Fraction of every dataset's train token stream this stage reads."""
    lr_warmup_iters: int
    """Linear warmup steps of this stage."""

    @property
    def positions(self) -> int:
        """Transformer sequence length T: what the pipeline schedule exchanges."""
        return self.seq_length // self.patch_size

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_length

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return (f"{self.name} K={self.patch_size} {self.train_iters} steps x {self.global_batch_size} "
                f"seq x {self.seq_length} tok, data {self.train_range[0]:.3g}-{self.train_range[1]:.3g}")


def total_steps(cfg) -> int:
    """N: the budget in token-stage steps."""
    t = cfg.train
    if t.train_iters is not None:
        return t.train_iters
    if t.train_samples is not None:
        return math.ceil(t.train_samples / t.global_batch_size)
    return math.ceil(t.train_tokens / (t.global_batch_size * t.seq_length))


def plan_stages(cfg, data_parallel_size: int = 1) -> List[Stage]:
    """All stages of the recipe in order (the `--stage` filter is applied by the caller)."""
    t = cfg.train
    n = total_steps(cfg)
    lam = t.patch_fraction if t.patch_size > 1 else 0.0
    token_seq = t.seq_length
    stages = []
    if lam > 0:
        K = t.patch_size
        seq = t.patch_seq_length or t.seq_length * K  # default: the token stage's T positions
        if t.patch_batch_policy == "same_tokens":
            if (t.global_batch_size * token_seq) % seq:
                raise ValueError(
                    f"same_tokens policy: the patch stage needs global_batch_size*seq_length = "
                    f"{t.global_batch_size * token_seq} tokens per step in samples of {seq} tokens; "
                    "that is not a whole number of sequences. Adjust --patch-seq-length or "
                    "--global-batch-size, or use --patch-batch-policy same_sequences"
                )
            gbs = t.global_batch_size * token_seq // seq
        else:
            gbs = t.global_batch_size
        data_tokens = lam * n * t.global_batch_size * token_seq
        steps = max(1, round(data_tokens / (gbs * seq)))
        stages.append(Stage("patch", K, steps, gbs, t.micro_batch_size, seq, (0.0, lam),
                            cfg.optim.lr_warmup_iters))
    token_steps = n - round(lam * n)
    if token_steps > 0:
        stages.append(Stage("token", 1, token_steps, t.global_batch_size, t.micro_batch_size,
                            token_seq, (lam, 1.0), cfg.optim.lr_warmup_iters))
    for s in stages:
        check_stage(cfg, s, data_parallel_size)
    return stages


def eval_stage(cfg) -> Stage:
    """Token-level validation batches: K = 1, the token stage's batch and sequence length."""
    t = cfg.train
    return Stage("eval", 1, t.eval_iters, t.global_batch_size, t.micro_batch_size, t.seq_length,
                 (0.0, 1.0), 0)


def check_stage(cfg, stage: Stage, dp: int) -> None:
    validate_for(cfg.model, cfg.parallel, stage.patch_size, stage.seq_length)
    per_step = stage.micro_batch_size * dp
    if stage.global_batch_size % per_step:
        raise ValueError(
            f"{stage.name} stage: global batch of {stage.global_batch_size} sequences is not a "
            f"multiple of micro_batch_size x data-parallel size = {stage.micro_batch_size} x {dp}; "
            "change --global-batch-size or --micro-batch-size"
        )
    if stage.lr_warmup_iters >= stage.train_iters:
        raise ValueError(
            f"--lr-warmup-iters {stage.lr_warmup_iters} must be smaller than the {stage.name} "
            f"stage's {stage.train_iters} steps; lower it or raise the budget"
        )


def stages_to_run(cfg, stages: List[Stage]) -> List[Stage]:
    if cfg.train.stage == "all":
        return stages
    chosen = [s for s in stages if s.name == cfg.train.stage]
    if not chosen:
        raise ValueError(
            f"--stage {cfg.train.stage}: the recipe has no such stage "
            f"(planned: {[s.name for s in stages]})"
        )
    return chosen
