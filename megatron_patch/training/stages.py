"""The paper's recipe as data: a run is a list of `Stage`s, and K = 1 is the token stage.

Budget (docs/design.md): N steps of B = global_batch_size * seq_length tokens. The patch stage
consumes the first lambda of the data, lambda*N*B tokens, at K tokens per position; the token
stage consumes the rest, (1 - lambda)*N steps. A patch-stage sample has patch_seq_length tokens,
by default K*seq_length: the same T transformer positions as a token-stage sample (the paper:
2048 patches = 8192 tokens). With the default `same_tokens` policy the patch stage also has B
tokens per step (B / patch_seq_length sequences: K times fewer), so it runs lambda*N steps; with
`same_sequences` it has global_batch_size sequences per step and correspondingly fewer steps.
Each stage has its own LR schedule (warmup + decay over its own steps) and data range.

Recipe knobs (the paper's values are the defaults) are fields of the Stage, so the loop reads
them like any other stage data: the peak and final learning rate (--patch-lr/--patch-min-lr for
patch stages), the warmup (--token-lr-warmup-iters for the token stage), whether the stage
starts from the previous stage's optimizer state (--handover-optimizer carry) or a fresh one,
the weights of a patch's K targets (--patch-target-decay) and the dtype of the patch mean
(--patch-mean-dtype). A K schedule (--patch-schedule 4:0.5,2:0.1667) is several patch stages,
"patch_k4", "patch_k2", each over its share of the data and handed over to the next in turn.
"""
import math
from dataclasses import asdict, dataclass, replace
from typing import List, Optional, Tuple

from megatron_patch.config import validate_for
from megatron_patch.training import rundir


@dataclass(frozen=True)
class Stage:
    """One training stage; the loop knows nothing else about patches."""

    name: str
    """"patch" (or "patch_k4", ... with a K schedule) or "token"; also the checkpoint
    sub-directory and the metrics `stage` field."""
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
    lr: Optional[float] = None
    """Peak learning rate of this stage (None: not trained, e.g. validation batches)."""
    min_lr: Optional[float] = None
    """Learning rate at the end of this stage's decay."""
    carry_optimizer: bool = False
    """Start from the previous stage's final optimizer state (Adam moments and step counts)
    instead of a fresh optimizer; the LR schedule and the step still start at 0."""
    target_decay: float = 1.0
    """Target k of a patch weighs target_decay**k, normalised to average 1 (1: uniform)."""
    mean_dtype: str = "fp32"
    """Accumulation dtype of the K-token patch mean: "fp32" or "param"."""
    reinit: Tuple[str, ...] = ()
    """Parameter groups re-initialised (a fresh draw of the model's own init) when this stage
    starts from the previous stage's weights (training/handover.py); ("all",): a fresh model."""
    shrink: float = 1.0
    """Shrink and perturb at this stage's start: theta <- shrink * theta + perturb * theta_fresh."""
    perturb: float = 0.0
    """See `shrink` (Ash & Adams, 2020); (1, 0) keeps the weights as they are."""
    schedule_offset: int = 0
    """Steps of the run's one LR schedule before this stage (--lr-schedule-scope run); 0 with a
    schedule per stage."""
    lr_decay_iters: Optional[int] = None
    """Steps the LR decays over (None: train_iters); afterwards it stays at min_lr."""

    @property
    def positions(self) -> int:
        """Transformer sequence length T: what the pipeline schedule exchanges."""
        return self.seq_length // self.patch_size

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_length

    @property
    def starts_fresh(self) -> bool:
        """Every weight is re-initialised at the hand-over: the stage needs no earlier weights."""
        return "all" in self.reinit

    @property
    def kind(self) -> str:
        """"patch" for every patch stage (K > 1), "token" for K = 1: what `--stage` selects."""
        return "patch" if self.patch_size > 1 else "token"

    def model_args(self) -> dict:
        """The model's share of the stage (builders.build_chunks / model.build_model keywords)."""
        return {"patch_size": self.patch_size, "target_decay": self.target_decay, "mean_dtype": self.mean_dtype}

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
    t, o = cfg.train, cfg.optim
    n = total_steps(cfg)
    phases = t.patch_phases()  # [(K, fraction)]: one pair, a K schedule, or none
    token_seq = t.seq_length
    carry = o.handover_optimizer == "carry"
    patch_lr, patch_min_lr = o.stage_lrs(patch=True)
    stages = []
    start = 0.0
    for K, fraction in phases:
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
        data_tokens = fraction * n * t.global_batch_size * token_seq
        steps = max(1, round(data_tokens / (gbs * seq)))
        name = rundir.patch_stage_name(K, scheduled=len(phases) > 1)
        mbs = patch_micro_batch(t, name, gbs, data_parallel_size)
        stages.append(Stage(name, K, steps, gbs, mbs, seq, (start, min(start + fraction, 1.0)),
                            o.lr_warmup_iters, patch_lr, patch_min_lr, carry and bool(stages),
                            t.patch_target_decay, t.patch_mean_dtype))
        start += fraction
    lam = min(start, 1.0)
    token_steps = n - round(lam * n)
    if token_steps > 0:
        warmup = o.lr_warmup_iters if o.token_lr_warmup_iters is None else o.token_lr_warmup_iters
        stages.append(Stage("token", 1, token_steps, t.global_batch_size, t.micro_batch_size,
                            token_seq, (lam, 1.0), warmup, o.lr, o.min_lr, carry and bool(stages)))
    stages = [replace(s, **lr_schedule(cfg, s, n)) for s in stages]
    stages = [_with_handover(cfg, s, i, stages) for i, s in enumerate(stages)]
    for s in stages:
        check_stage(cfg, s, data_parallel_size)
    return stages


def _with_handover(cfg, stage: Stage, index: int, stages: List[Stage]) -> Stage:
    """The hand-over variants (every stage after the first) and the run-wide LR schedule."""
    o = cfg.optim
    changes = {}
    if index > 0:
        changes.update(reinit=o.reinit_groups(), shrink=o.handover_shrink, perturb=o.handover_perturb)
    if o.lr_schedule_scope == "run":
        # One schedule: the first stage's warmup, then one decay over every stage's steps.
        changes.update(schedule_offset=sum(s.train_iters for s in stages[:index]),
                       lr_warmup_iters=stages[0].lr_warmup_iters,
                       lr_decay_iters=sum(s.train_iters for s in stages))
    return replace(stage, **changes) if changes else stage


def lr_schedule(cfg, stage: Stage, n: int) -> dict:
    """A stage's warmup and decay steps under Megatron-LM's schedule flags (docs/design.md):
    --lr-decay-iters/--lr-decay-samples are a share of the whole budget of n steps, and each stage
    decays over that share of its own steps; --lr-warmup-fraction is a fraction of the stage's
    decay; --lr-warmup-samples, like --lr-warmup-iters, is steps of every stage."""
    o, t = cfg.optim, cfg.train
    decay_budget = o.lr_decay_iters
    if decay_budget is None and o.lr_decay_samples is not None:
        decay_budget = o.lr_decay_samples / t.global_batch_size
    decay = stage.train_iters if decay_budget is None else max(1, round(stage.train_iters * decay_budget / n))
    warmup = stage.lr_warmup_iters
    if not (stage.kind == "token" and o.token_lr_warmup_iters is not None):
        if o.lr_warmup_fraction is not None:
            warmup = round(o.lr_warmup_fraction * decay)
        elif o.lr_warmup_samples is not None:
            warmup = math.ceil(o.lr_warmup_samples / t.global_batch_size)
    return {"lr_warmup_iters": warmup, "lr_decay_iters": decay}


def patch_micro_batch(t, name: str, gbs: int, dp: int) -> int:
    """The patch stage's micro-batch: --patch-micro-batch-size, or the token stage's lowered to
    the largest divisor of the stage's sequences per step per data-parallel rank."""
    if gbs % dp:
        raise ValueError(
            f"{name} stage: {gbs} sequences per step cannot be shared by {dp} data-parallel ranks. "
            f"Use a --global-batch-size that is a multiple of {dp * gbs_ratio(t, gbs)} (the patch "
            f"stage has 1/{gbs_ratio(t, gbs)} of the token stage's sequences per step), or "
            "--patch-batch-policy same_sequences")
    if t.patch_micro_batch_size is not None:
        return t.patch_micro_batch_size  # check_stage says if it does not divide
    per_rank = gbs // dp
    return max(m for m in range(1, min(t.micro_batch_size, per_rank) + 1) if per_rank % m == 0)


def gbs_ratio(t, gbs: int) -> int:
    """How many token-stage sequences one patch-stage sequence replaces per step (K by default)."""
    return max(1, t.global_batch_size // gbs)


def micro_batch_notes(cfg, stages: List[Stage]) -> List[str]:
    """One line per patch stage whose micro-batch was lowered automatically."""
    t = cfg.train
    if t.patch_micro_batch_size is not None:
        return []
    return [f"{s.name} stage: micro-batch {s.micro_batch_size} (--micro-batch-size {t.micro_batch_size} "
            f"does not divide its {s.global_batch_size} sequences per step over the data-parallel "
            "ranks; set --patch-micro-batch-size to choose)"
            for s in stages if s.kind == "patch" and s.micro_batch_size != t.micro_batch_size]


def ideal_ratio(cfg) -> float:
    """Compute of the recipe over token-only training on the same data: sum(lambda_i / K_i) +
    (1 - lambda), lambda = sum(lambda_i) (the paper's lambda/K + 1 - lambda for one stage)."""
    phases = cfg.train.patch_phases()
    lam = min(sum(f for _, f in phases), 1.0)
    return sum(f / K for K, f in phases) + 1 - lam


def recipe(cfg) -> dict:
    """The recipe knobs of a run as configured (None: the value it defaults to), for compute.json."""
    t, o = cfg.train, cfg.optim
    return {"patch_schedule": [[K, f] for K, f in t.patch_phases()], "patch_lr": o.patch_lr,
            "patch_min_lr": o.patch_min_lr, "token_lr_warmup_iters": o.token_lr_warmup_iters,
            "handover_optimizer": o.handover_optimizer, "patch_target_decay": t.patch_target_decay,
            "patch_mean_dtype": t.patch_mean_dtype, "handover_reinit": o.handover_reinit,
            "handover_shrink": o.handover_shrink, "handover_perturb": o.handover_perturb,
            "lr_schedule_scope": o.lr_schedule_scope, "output_proj_init": cfg.model.output_proj_init}


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
            + ("change --global-batch-size or --patch-micro-batch-size" if stage.kind == "patch"
               else "change --global-batch-size or --micro-batch-size")
        )
    if stage.lr_decay_iters is not None and stage.lr_warmup_iters >= stage.lr_decay_iters < stage.train_iters:
        raise ValueError(
            f"the {stage.name} stage warms up for {stage.lr_warmup_iters} steps but decays over "
            f"{stage.lr_decay_iters} (--lr-decay-iters/--lr-decay-samples, split by its share of "
            "the budget); the warmup must be shorter than the decay"
        )
    if stage.schedule_offset == 0 and stage.lr_warmup_iters >= stage.train_iters:
        flag = "--token-lr-warmup-iters" if stage.kind == "token" and cfg.optim.token_lr_warmup_iters is not None \
            else "--lr-warmup-iters"
        raise ValueError(
            f"{flag} {stage.lr_warmup_iters} must be smaller than the {stage.name} "
            f"stage's {stage.train_iters} steps; lower it or raise the budget"
        )


def stages_to_run(cfg, stages: List[Stage]) -> List[Stage]:
    if cfg.train.stage == "all":
        return stages
    chosen = [s for s in stages if s.kind == cfg.train.stage]  # --stage patch: every patch stage
    if not chosen:
        raise ValueError(
            f"--stage {cfg.train.stage}: the recipe has no such stage "
            f"(planned: {[s.name for s in stages]})"
        )
    return chosen
