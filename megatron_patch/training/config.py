"""The run configuration: typed sections, and one parser for a YAML file and Megatron-style flags.

    cfg = parse_config(["--config", "examples/configs/cpu_demo.yaml", "--train-iters", "20"])

Precedence: dataclass defaults < model preset < YAML file < command-line flags. The YAML has one
mapping per section (`model`, `parallel`, `data`, `optim`, `train`, `checkpoint`, `logging`)
whose keys are the field names below; `model: {preset: 370m, ...}` starts from a named preset in
megatron_patch.config and overrides fields. Every field is a flag (Megatron-LM's spelling; see
megatron_patch/flags.py) whose `--help` is the field's docstring. The resolved config
(`to_dict`) is written beside every checkpoint and reads back with `config_from_dict`.

Checks: each section validates its own fields once, when the config is built
(`validate_fields`); checks that need files, the tokenizer or the launch live in preflight.py;
checks of a stage's shapes against the model and layout in megatron_patch.config.validate_for.
"""
import argparse
import dataclasses
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import List, Optional, Tuple

import yaml

from megatron_patch import flags as F
from megatron_patch.config import PRESETS, ModelConfig, ParallelConfig, get_preset
from megatron_patch.training import megatron_flags

TOKENIZER_TYPES = ("SentencePieceTokenizer", "Llama2Tokenizer", "GPTSentencePieceTokenizer",
                   "HuggingFaceTokenizer", "NullTokenizer", "GPT2BPETokenizer")
HANDOVER_OPTIMIZER = ("reset", "carry")
HANDOVER_GROUPS = ("embedding", "output_layer", "final_norm", "out_proj", "layers", "all")
PATCH_MEAN_DTYPES = ("fp32", "param")


def parse_patch_schedule(text: str) -> List[Tuple[int, float]]:
    """"4:0.5,2:1/6" -> [(4, 0.5), (2, 0.1667)]: the patch stages' K and share of the data, in
    order. ValueError (with the expected form) on anything else."""
    form = "give K:fraction pairs separated by commas, e.g. 4:0.5,2:0.1667 (K=4 for half the data, then K=2)"
    phases = []
    for part in text.split(","):
        k_text, sep, f_text = part.strip().partition(":")
        if not sep:
            raise ValueError(f"--patch-schedule {text!r}: {part.strip()!r} lacks ':'; {form}")
        try:
            K, fraction = int(k_text), float(Fraction(f_text.strip()))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"--patch-schedule {text!r}: cannot read {part.strip()!r}; {form}") from None
        phases.append((K, fraction))
    return phases


@dataclass
class DataConfig:
    """Training data and tokenizer."""

    data_path: List[str] = field(default_factory=list)
    """Megatron dataset prefixes without .bin/.idx: PREFIX, or a blend W1 PREFIX1 W2 PREFIX2 ..."""
    mock_data: bool = False
    """Train on random tokens instead of --data-path (bring-up and throughput checks)."""
    split: str = "969,30,1"
    """Train/validation/test proportions of each dataset, by documents."""
    tokenizer_type: Optional[str] = field(default=None, metadata=F.flag("--tokenizer-type", choices=TOKENIZER_TYPES))
    """Tokenizer kind (None: HuggingFaceTokenizer for a directory, SentencePieceTokenizer for a file)."""
    tokenizer_model: Optional[str] = None
    """SentencePiece .model file, or a directory holding a Hugging Face tokenizer.json."""
    vocab_size: Optional[int] = None
    """Vocabulary size of the NullTokenizer (other tokenizers know their own)."""
    vocab_file: Optional[str] = None
    """GPT2BPETokenizer's vocabulary (GPT-2's vocab.json)."""
    merge_file: Optional[str] = None
    """GPT2BPETokenizer's BPE merges (GPT-2's merges.txt)."""
    align_documents: bool = False
    """Pad documents to patch boundaries (the padding is masked from the loss); the paper does not."""
    cache_dir: Optional[str] = field(default=None, metadata=F.flag("--data-cache-path"))
    """Directory of the sample-index cache (None: index-cache/ next to the first dataset)."""

    def validate_fields(self, launch: bool = True) -> None:
        if launch and not self.data_path and not self.mock_data:
            raise ValueError("--data-path is required (a Megatron prefix without .bin/.idx), "
                             "or --mock-data for random tokens")
        if self.tokenizer_type == "NullTokenizer":
            if not self.vocab_size or self.vocab_size < 2:
                raise ValueError("--tokenizer-type NullTokenizer needs --vocab-size N (N >= 2)")
        elif self.tokenizer_type == "GPT2BPETokenizer" or self.vocab_file or self.merge_file:
            if launch and not (self.vocab_file and self.merge_file):
                raise ValueError("GPT2BPETokenizer needs --vocab-file VOCAB.json and --merge-file "
                                 "MERGES.txt (GPT-2's are gpt2-vocab.json and gpt2-merges.txt)")
        elif launch and not self.tokenizer_model:
            raise ValueError("--tokenizer-model is required (a SentencePiece .model or a directory "
                             "with tokenizer.json); or --tokenizer-type NullTokenizer --vocab-size N; "
                             "or --vocab-file and --merge-file for GPT2BPETokenizer")
        parts = self.split.replace("/", ",").split(",")
        try:
            weights = [float(p) for p in parts]
        except ValueError:
            weights = []
        if not 1 <= len(weights) <= 3 or any(w < 0 or not math.isfinite(w) for w in weights) \
                or not weights or weights[0] <= 0:
            raise ValueError(f"--split {self.split!r}: give up to three non-negative train,valid,test "
                             "proportions with a positive train share, e.g. 969,30,1")


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (the paper's values are the defaults)."""

    lr: float = 3e-4
    """Peak learning rate."""
    min_lr: float = 3e-5
    """Learning rate at the end of the decay."""
    lr_warmup_iters: int = 2000
    """Linear warmup steps; every stage has its own warmup of this many of its steps (the
    paper's 2000; Megatron-LM's default is 0)."""
    lr_warmup_fraction: Optional[float] = None
    """Warmup as a fraction of the decay, as in Megatron-LM, per stage: each stage warms up for
    this fraction of its own decay steps. Replaces --lr-warmup-iters."""
    lr_warmup_samples: Optional[int] = None
    """Warmup in samples (Megatron-LM's sample-based spelling): ceil(samples / --global-batch-size)
    steps, in every stage, like --lr-warmup-iters. Replaces --lr-warmup-iters."""
    lr_decay_iters: Optional[int] = None
    """Decay length in steps of the whole budget, as in Megatron-LM (None: the budget; after the
    decay the lr stays at --min-lr). Split between stages by their share: each stage decays over
    round(its steps x lr_decay_iters / budget steps) of its own steps."""
    lr_decay_samples: Optional[int] = None
    """Decay length in samples (Megatron-LM's sample-based spelling of --lr-decay-iters:
    lr_decay_samples / --global-batch-size steps of the budget), split between stages the same way."""
    patch_lr: Optional[float] = None
    """Peak learning rate of the patch stage(s) (None: --lr, the paper's single value)."""
    patch_min_lr: Optional[float] = None
    """Learning rate at the end of the patch stage's decay (None: --min-lr)."""
    token_lr_warmup_iters: Optional[int] = None
    """Linear warmup steps of the token stage (None: --lr-warmup-iters)."""
    handover_optimizer: str = field(default="reset", metadata=F.flag(
        "--handover-optimizer", choices=HANDOVER_OPTIMIZER))
    """At each hand-over between stages: reset the optimizer (the paper) or carry its state (Adam
    moments and step counts from the previous stage's final checkpoint; the LR schedule and the
    stage's step still start fresh)."""
    handover_reinit: Optional[str] = None
    """Parameter groups re-initialised at each hand-over with the model's own init (a fresh draw),
    comma-separated: embedding, output_layer, final_norm, out_proj (every layer's attention
    and MLP output projections), layers (every transformer layer), all (a fresh model: with
    --stage token, the token stage alone, the transfer control). None: the paper's plain
    carry-over."""
    handover_shrink: float = 1.0
    """Shrink and perturb at each hand-over (Ash & Adams, 2020): theta <- shrink * theta +
    perturb * theta_fresh, on the weights not re-initialised. 1 (with perturb 0): unchanged."""
    handover_perturb: float = 0.0
    """The fresh weights' factor of shrink and perturb (see --handover-shrink)."""
    lr_schedule_scope: str = field(default="stage", metadata=F.flag(
        "--lr-schedule-scope", choices=("stage", "run")))
    """stage: every stage warms up and decays over its own steps (the paper); run: one schedule
    over the whole run (the first stage's warmup, then one decay over all stages' steps)."""
    lr_decay_style: str = field(default="cosine", metadata=F.flag("--lr-decay-style", choices=("cosine", "linear", "constant")))
    """Decay after warmup (megatron-core OptimizerParamScheduler)."""
    weight_decay: float = 0.1
    """Decoupled weight decay (not applied to norms and biases)."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.95
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 disables)."""
    use_distributed_optimizer: bool = False
    """Shard optimizer state across data-parallel ranks (megatron-core DistributedOptimizer)."""

    def validate_fields(self) -> None:
        for name in ("lr", "min_lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps", "clip_grad"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"--{name.replace('_', '-')} is {getattr(self, name)}: it must be a finite number")
        if self.lr <= 0 or self.lr > 1.0:
            raise ValueError(f"--lr {self.lr} is not a usable learning rate: give a value in (0, 1], "
                             "e.g. 3e-4")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= --min-lr ({self.min_lr}) <= --lr ({self.lr})")
        if self.lr_warmup_iters < 0:
            raise ValueError("--lr-warmup-iters must be >= 0")
        self.validate_handover()
        if self.lr_warmup_fraction is not None and not 0 <= self.lr_warmup_fraction < 1:
            raise ValueError(f"--lr-warmup-fraction must be in [0, 1), got {self.lr_warmup_fraction}")
        if self.lr_warmup_fraction is not None and self.lr_warmup_samples is not None:
            raise ValueError("give one warmup: --lr-warmup-fraction or --lr-warmup-samples (or --lr-warmup-iters)")
        if self.lr_decay_iters is not None and self.lr_decay_samples is not None:
            raise ValueError("give one decay length: --lr-decay-iters or --lr-decay-samples")
        for name in ("lr_warmup_samples", "lr_decay_iters", "lr_decay_samples"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "lr_warmup_samples" else 1):
                raise ValueError(f"--{name.replace('_', '-')} must be "
                                 f"{'>= 0' if name == 'lr_warmup_samples' else '>= 1'}, got {value}")
        for name in ("patch_lr", "patch_min_lr"):
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
                raise ValueError(f"--{name.replace('_', '-')} is {getattr(self, name)}: it must be a finite number")
        patch_lr, patch_min_lr = self.stage_lrs(patch=True)
        if not 0 < patch_lr <= 1.0:
            raise ValueError(f"--patch-lr {patch_lr} is not a usable learning rate: give a value in (0, 1], "
                             "e.g. 1e-3, or leave it out to use --lr")
        if not 0 <= patch_min_lr <= patch_lr:
            raise ValueError(f"need 0 <= patch-stage min lr ({patch_min_lr}) <= patch-stage lr ({patch_lr}); "
                             "set --patch-min-lr (it defaults to --min-lr)")
        if self.token_lr_warmup_iters is not None and self.token_lr_warmup_iters < 0:
            raise ValueError("--token-lr-warmup-iters must be >= 0 (or left out to use --lr-warmup-iters)")
        if not (0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1):
            raise ValueError(f"Adam betas must be in [0, 1), got {self.adam_beta1}, {self.adam_beta2}")
        if not 0 < self.adam_eps < 1:
            raise ValueError(f"--adam-eps must be in (0, 1), got {self.adam_eps}")
        if not 0 <= self.weight_decay < 1:
            raise ValueError(f"--weight-decay must be in [0, 1) (decoupled: lr x wd per step), "
                             f"got {self.weight_decay}")
        if self.clip_grad < 0:
            raise ValueError("--clip-grad must be >= 0 (0 disables clipping)")

    def reinit_groups(self) -> tuple:
        """--handover-reinit as a tuple of group names (() when left out)."""
        if not self.handover_reinit:
            return ()
        return tuple(g.strip() for g in str(self.handover_reinit).split(",") if g.strip())

    def validate_handover(self) -> None:
        bad = [g for g in self.reinit_groups() if g not in HANDOVER_GROUPS]
        if bad:
            raise ValueError(f"--handover-reinit {self.handover_reinit}: unknown group(s) {bad}; "
                             f"choose from {', '.join(HANDOVER_GROUPS)} (comma-separated)")
        for name in ("handover_shrink", "handover_perturb"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}")
        changed = self.reinit_groups() or (self.handover_shrink, self.handover_perturb) != (1.0, 0.0)
        if changed and self.handover_optimizer == "carry":
            raise ValueError("--handover-reinit / --handover-shrink / --handover-perturb change the weights "
                             "that carried Adam moments belong to; use --handover-optimizer reset with them")
        if self.lr_schedule_scope == "run":
            own = [f for f, v in (("--patch-lr", self.patch_lr), ("--patch-min-lr", self.patch_min_lr),
                                  ("--token-lr-warmup-iters", self.token_lr_warmup_iters),
                                  ("--lr-decay-iters", self.lr_decay_iters),
                                  ("--lr-decay-samples", self.lr_decay_samples)) if v is not None]
            if own:
                raise ValueError(f"--lr-schedule-scope run is one schedule over the whole run; "
                                 f"{', '.join(own)} set(s) a stage's own schedule: drop it or use "
                                 "--lr-schedule-scope stage")

    def stage_lrs(self, patch: bool) -> tuple:
        """(peak, final) learning rate of a patch stage (patch=True) or of the token stage."""
        if not patch:
            return self.lr, self.min_lr
        return (self.lr if self.patch_lr is None else self.patch_lr,
                self.min_lr if self.patch_min_lr is None else self.patch_min_lr)


@dataclass
class TrainConfig:
    """Batch, budget, the patch recipe and the loop's intervals."""

    micro_batch_size: int = 1
    """Sequences per forward pass per data-parallel rank in the token stage (and, by default,
    in the patch stage)."""
    patch_micro_batch_size: Optional[int] = None
    """Sequences per forward pass per data-parallel rank in the patch stage (None: the token
    stage's, lowered to the largest value that divides the patch stage's sequences per step
    per data-parallel rank; a patch sample has T positions, so its activations per sequence
    are about a token sample's)."""
    global_batch_size: int = 8
    """Sequences per optimizer step in the token stage."""
    seq_length: int = 2048
    """Tokens per sample in the token stage (= its transformer positions T)."""
    patch_seq_length: Optional[int] = None
    """Tokens per patch-stage sample, T*K, a multiple of K (None: seq_length*K, the token stage's
    T positions; the paper: 2048 patches = 8192 tokens at K=4)."""
    train_iters: Optional[int] = None
    """Budget N in token-stage steps of global_batch_size*seq_length tokens (one of the three budgets)."""
    train_samples: Optional[int] = None
    """Budget in token-stage samples of seq_length tokens; N = ceil(samples / global_batch_size)."""
    train_tokens: Optional[int] = None
    """Budget in tokens; N = ceil(tokens / (global_batch_size*seq_length))."""
    patch_size: int = 1
    """K: tokens per patch in the patch stage (1 = token-level training only)."""
    patch_fraction: float = 0.0
    """lambda: fraction of the data (and of N) consumed at patch level; the paper uses 2/3."""
    patch_schedule: Optional[str] = None
    """Several patch stages: K:fraction pairs of the data, in order, before the token stage, e.g.
    4:0.5,2:0.1667 (K=4 for half the data, then K=2 for a sixth, then K=1). K strictly decreasing,
    fractions summing to lambda <= 1. Overrides --patch-size/--patch-fraction (one pair)."""
    patch_target_decay: float = 1.0
    """Weight of the K targets of a patch: target k (k = 0 right after the patch boundary) weighs
    R**k, normalised to average 1. 1 = uniform (the paper); R < 1 stresses the nearest tokens."""
    patch_mean_dtype: str = field(default="fp32", metadata=F.flag("--patch-mean-dtype", choices=PATCH_MEAN_DTYPES))
    """The K-token mean of a patch's input: fp32 (summed in fp32 and rounded once to the compute
    dtype: under bf16 the exact mean as a bf16 activation) or param (a running sum in the
    parameter dtype, rounded after every addition, then divided by K)."""
    patch_batch_policy: str = field(default="same_tokens", metadata=F.flag(
        "--patch-batch-policy", choices=("same_tokens", "same_sequences")))
    """Patch-stage batch: same_tokens per step as the token stage (K times fewer sequences; the
    paper's recipe) or same_sequences (global_batch_size sequences, K times fewer steps)."""
    stage: str = field(default="all", metadata=F.flag("--stage", choices=("all", "patch", "token")))
    """Which stages this launch runs: all (patch, hand-over, token), patch (every patch stage of
    the recipe) or token."""
    seed: int = 1234
    """Seeds weights, data order and RNG."""
    bf16: Optional[bool] = field(default=None, metadata=F.flags(F.flag("--bf16", const=True), F.flag("--fp32", const=False)))
    """bf16 parameters and compute with fp32 main weights (--bf16) or fp32 throughout (--fp32);
    None: bf16 on GPU, fp32 on CPU."""
    eval_interval: Optional[int] = None
    """Steps between token-level validations (None: only at the end of each stage)."""
    eval_iters: int = 4
    """Validation batches (of global_batch_size token-level sequences) per evaluation; 0: no validation."""
    skip_bad_steps: int = 0
    """Skip up to this many optimizer steps whose loss or gradient norm is NaN/Inf (0: stop at the first)."""
    exit_signal_handler: bool = False
    """On --exit-signal, finish the current step, save a checkpoint and exit with status 3."""
    exit_signal: str = field(default="SIGTERM", metadata=F.flag("--exit-signal", choices=("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")))
    """The signal --exit-signal-handler catches (SLURM: #SBATCH --signal=USR1@120 with SIGUSR1)."""
    exit_duration_in_mins: Optional[float] = None
    """Save and exit (status 3) once this launch has run this many minutes."""
    exit_interval: Optional[int] = None
    """Save and exit (status 3) when the stage's step is a multiple of this."""

    def validate_fields(self, launch: bool = True) -> None:
        budgets = [b for b in (self.train_iters, self.train_samples, self.train_tokens) if b is not None]
        if len(budgets) > 1 or (launch and not budgets):
            raise ValueError("give exactly one budget: --train-iters N, --train-samples N or --train-tokens N")
        if budgets and budgets[0] < 1:
            raise ValueError("the training budget (--train-iters / --train-samples / --train-tokens) must be positive")
        for name in ("micro_batch_size", "global_batch_size", "seq_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.eval_iters < 0:
            raise ValueError("--eval-iters must be >= 0 (0: no validation)")
        if self.skip_bad_steps < 0:
            raise ValueError("--skip-bad-steps must be >= 0")
        for name in ("eval_interval", "patch_seq_length", "exit_interval", "patch_micro_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1 (or left out), got {getattr(self, name)}")
        if self.exit_duration_in_mins is not None and not self.exit_duration_in_mins > 0:
            raise ValueError("--exit-duration-in-mins must be positive")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"--global-batch-size {self.global_batch_size} is not a multiple of "
                f"--micro-batch-size {self.micro_batch_size}"
            )
        if self.patch_size < 1:
            raise ValueError(f"--patch-size must be an integer >= 1, got {self.patch_size!r}")
        if not 0.0 <= self.patch_fraction <= 1.0:
            raise ValueError(f"--patch-fraction must be in [0, 1] (the paper uses 2/3), got {self.patch_fraction}")
        phases = self.patch_phases()
        if self.patch_schedule is not None:
            Ks = [K for K, _ in phases]
            if any(K < 2 for K in Ks) or any(a <= b for a, b in zip(Ks, Ks[1:])):
                raise ValueError(f"--patch-schedule {self.patch_schedule!r}: K must be >= 2 and strictly "
                                 "decreasing (coarse to fine, then the token stage), e.g. 4:0.5,2:0.1667")
            total = sum(f for _, f in phases)
            if any(f <= 0 for _, f in phases) or total > 1.0 + 1e-9:
                raise ValueError(f"--patch-schedule {self.patch_schedule!r}: every fraction must be > 0 and "
                                 f"their sum (lambda) <= 1, got {total:.4g}")
        for K in [K for K, _ in phases] if self.patch_schedule else [self.patch_size]:
            if self.patch_seq_length is not None and self.patch_seq_length % K:
                fix = self.patch_seq_length - self.patch_seq_length % K or K
                flag = "a K of --patch-schedule" if self.patch_schedule else "--patch-size"
                raise ValueError(
                    f"--patch-seq-length {self.patch_seq_length} is not a multiple of {flag} "
                    f"{K}: a patch-stage sample must be whole patches; use e.g. {fix}"
                )
        if self.stage == "patch" and not phases:
            raise ValueError("--stage patch needs --patch-size > 1 and --patch-fraction > 0 (or --patch-schedule)")
        if not (math.isfinite(self.patch_target_decay) and self.patch_target_decay > 0):
            raise ValueError(f"--patch-target-decay must be a positive number (1: uniform, the paper; "
                             f"0.5: each later target weighs half), got {self.patch_target_decay}")

    def patch_phases(self) -> List[Tuple[int, float]]:
        """The patch stages' (K, fraction of the data), in order; [] for token-level training only."""
        if self.patch_schedule is not None:
            return parse_patch_schedule(self.patch_schedule)
        if self.patch_size > 1 and self.patch_fraction > 0:
            return [(self.patch_size, self.patch_fraction)]
        return []


@dataclass
class CheckpointConfig:
    """Run directory, resuming and initialisation."""

    save: Optional[str] = None
    """Run directory: SAVE/patch, SAVE/patch_weights, SAVE/token, metrics.jsonl, compute.json."""
    load: Optional[str] = None
    """Resume the run in this run directory (usually = --save); a weights-only checkpoint here
    initialises the first stage instead."""
    save_interval: Optional[int] = None
    """Steps between checkpoints (None: only at the end of each stage)."""
    init_from: Optional[str] = None
    """Weights the first stage starts from: a weights-only checkpoint, a finished stage, an
    imported Hugging Face model or a Megatron-LM torch_dist checkpoint."""
    finetune: bool = False
    """With --load: take only the weights and start the stage at step 0 (fresh optimizer, schedule, data)."""
    load_optim: bool = field(default=True, metadata=F.flag("--no-load-optim", const=False))
    """Restore the optimizer state on resume (--no-load-optim: a fresh optimizer)."""
    load_rng: bool = field(default=True, metadata=F.flag("--no-load-rng", const=False))
    """Restore the RNG states on resume (--no-load-rng: reseed)."""
    allow_unfinished_stage: bool = False
    """Allow the hand-over (--init-from, conversion) from a stage that did not complete its steps."""

    def validate_fields(self) -> None:
        if self.save_interval is not None and self.save_interval < 1:
            raise ValueError("--save-interval must be >= 1 (omit it to save only at the end of a stage)")
        if self.finetune and not (self.load or self.init_from):
            raise ValueError("--finetune needs --load (weights to start from)")


@dataclass
class LoggingConfig:
    """Log lines, TensorBoard and Weights & Biases."""

    log_interval: int = 1
    """Steps between log lines and metrics.jsonl train records."""
    tensorboard: bool = field(default=True, metadata=F.flag("--no-tensorboard", const=False))
    """Write TensorBoard events when tensorboard is installed (--no-tensorboard: don't)."""
    tensorboard_dir: Optional[str] = None
    """TensorBoard event directory (None: SAVE/tensorboard)."""
    wandb_project: Optional[str] = None
    """Weights & Biases project: log the metrics.jsonl records there too (WANDB_MODE=offline works)."""
    wandb_exp_name: Optional[str] = None
    """Weights & Biases run name (None: the --save directory's name)."""
    wandb_save_dir: Optional[str] = None
    """Weights & Biases local directory (None: SAVE/wandb)."""

    def validate_fields(self) -> None:
        if self.log_interval < 1:
            raise ValueError("--log-interval must be >= 1")


@dataclass
class RunConfig:
    """Everything one launch of tools/pretrain.py needs."""

    model: ModelConfig
    model_preset: Optional[str] = None
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# Sections built by `set_fields` (the model section goes through its preset instead).
SECTIONS = {
    "parallel": ParallelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "checkpoint": CheckpointConfig,
    "logging": LoggingConfig,
}
ALL_SECTIONS = {"model": ModelConfig, **SECTIONS}
SHAPE = ("num_layers", "hidden_size", "num_attention_heads")
BUDGETS = ("train_iters", "train_samples", "train_tokens")


def model_from_dict(updates: dict) -> tuple:
    """(ModelConfig, preset name or None) from a YAML `model:` section (checked, with the fix)."""
    updates = dict(updates)
    preset = updates.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    hints = F.type_hints(ModelConfig)
    names = {f.name: f for f in dataclasses.fields(ModelConfig)}
    coerced = {}
    for k, v in updates.items():
        if k not in names:
            raise ValueError(f"unknown key model.{k}; valid keys of model: preset, {', '.join(sorted(names))}")
        coerced[k] = F.coerce(v, hints[k], f"model.{k}")
        choices = F.field_choices(names[k])
        if choices is not None and coerced[k] is not None and coerced[k] not in choices:
            raise ValueError(f"--{k.replace('_', '-')} {coerced[k]!r} is not supported by this product; "
                             f"supported: {', '.join(map(str, choices))}")
    if preset is not None:
        return get_preset(preset, **coerced), preset
    missing = [k for k in SHAPE if k not in coerced]
    if missing:
        raise ValueError(
            "no model: give a preset (--model 370m, or `model: {preset: ...}` in the YAML; presets: "
            f"{', '.join(sorted(PRESETS))}) or the shape ({', '.join('--' + m.replace('_', '-') for m in missing)})"
        )
    return ModelConfig(**coerced), None


def config_from_dict(d: dict, launch: bool = True) -> RunConfig:
    """A validated RunConfig from nested dicts (a YAML file's content or `to_dict` output).

    launch=False reads a config that describes weights rather than a launch (the config.yaml of
    an imported model): data, tokenizer and budget may be absent."""
    d = dict(d or {})
    unknown = set(d) - set(ALL_SECTIONS)
    if unknown:
        raise ValueError(f"unknown config section(s) {sorted(unknown)}; valid: {', '.join(ALL_SECTIONS)}")
    for name, section in d.items():
        if section is not None and not isinstance(section, dict):
            raise ValueError(f"config section {name!r} must be a mapping, got {section!r}")
    model, preset = model_from_dict(d.get("model") or {})
    cfg = RunConfig(model=model, model_preset=preset)
    for name, cls in SECTIONS.items():
        obj = cls()
        F.set_fields(obj, d.get(name) or {}, name)
        if hasattr(obj, "__post_init__"):
            obj.__post_init__()  # field checks of dataclasses that check at construction
        if name in ("data", "train"):
            obj.validate_fields(launch)
        elif hasattr(obj, "validate_fields"):
            obj.validate_fields()
        setattr(cfg, name, obj)
    if cfg.parallel.overlap_param_gather and not cfg.optim.use_distributed_optimizer:
        raise ValueError("--overlap-param-gather needs --use-distributed-optimizer (it overlaps the "
                         "DistributedOptimizer's parameter all-gather)")
    return cfg


def to_dict(cfg: RunConfig) -> dict:
    """Nested plain dict (YAML-able) that `config_from_dict` reads back to the same config."""
    out = {"model": {"preset": cfg.model_preset}}
    base = PRESETS.get(cfg.model_preset) if cfg.model_preset else None
    for f in dataclasses.fields(ModelConfig):
        value = getattr(cfg.model, f.name)
        if base is None or getattr(base, f.name) != value:
            out["model"][f.name] = value
    for name in SECTIONS:
        out[name] = dataclasses.asdict(getattr(cfg, name))
    return out


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def load_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise ValueError(f"config file {path} not found")
    with open(path) as f:
        try:
            d = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML: {err}") from None
    if d is not None and not isinstance(d, dict):
        raise ValueError(f"{path}: the top level must be a mapping of sections")
    return d or {}


def build_parser() -> argparse.ArgumentParser:
    """The flags of tools/pretrain.py, one per config field (help = the field's docstring)."""
    p = argparse.ArgumentParser(
        prog="pretrain.py",
        description="Patch-level pretraining on megatron-core (launch with torchrun). Flags override "
                    "the YAML given with --config; the YAML's keys are the field names, by section.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML run config (sections model, parallel, data, optim, train, "
                   "checkpoint, logging); flags override it")
    p.add_argument("--model", dest="model.preset", metavar="PRESET",
                   help=f"start from a named model: {', '.join(sorted(PRESETS))}")
    titles = {"model": "model", "parallel": "parallelism", "data": "data", "optim": "optimizer",
              "train": "training", "checkpoint": "checkpointing", "logging": "logging"}
    for name, cls in ALL_SECTIONS.items():
        F.add_section(p, name, cls, titles[name])
    megatron_flags.add_arguments(p)  # Megatron-LM flags that are not settings: no-ops, refusals
    return p


FLAGS = F.all_flags(ALL_SECTIONS)
"""{flag: (section, field)} of every flag except --config and --model."""


def parse_config(argv=None) -> RunConfig:
    """Flags (and the YAML they name) -> a validated RunConfig. Raises ValueError with the fix."""
    ns = build_parser().parse_args(argv)
    d = load_yaml(ns.config) if getattr(ns, "config", None) else {}
    d = {k: dict(v or {}) for k, v in d.items()}
    given = F.given(ns)
    if set(given.get("train", {})) & set(BUDGETS):  # a budget flag replaces the YAML's budget
        for key in BUDGETS:
            d.get("train", {}).pop(key, None)
    for section, values in given.items():
        d.setdefault(section, {}).update(values)
    notes = megatron_flags.check(ns, d)  # refuses what cannot be honoured, with the reason
    cfg = config_from_dict(d)
    cfg.given, cfg.megatron_notes = megatron_flags.given_fields(d), notes
    return cfg
