"""The run configuration: typed sections, one parser for YAML files and Megatron-style flags.

    cfg = parse_config(["--config", "examples/configs/cpu_demo.yaml", "--train-iters", "20"])

Precedence: dataclass defaults < YAML file < command-line flags. The YAML has one mapping per
section (`model`, `parallel`, `data`, `optim`, `train`, `checkpoint`) whose keys are the field
names below; `model: {preset: 370m, ...}` starts from a named preset in megatron_patch.config
and overrides fields. The resolved config (`to_dict`) is written beside every checkpoint and
reads back with `config_from_dict`.
"""
import argparse
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import List, Optional

import yaml

from megatron_patch.config import PRESETS, ModelConfig, ParallelConfig, get_preset


@dataclass
class DataConfig:
    """Where the tokens come from."""

    data_path: List[str] = field(default_factory=list)
    """Megatron prefixes without .bin/.idx: ["PREFIX"] or ["0.7", "A", "0.3", "B"]."""
    split: str = "969,30,1"
    """Train/validation/test proportions of each dataset."""
    tokenizer_model: Optional[str] = None
    """SentencePiece .model; its vocabulary size becomes the model's vocab_size."""
    align_documents: bool = False
    """Pad documents to patch boundaries (masked from the loss); the paper does not."""
    cache_dir: Optional[str] = None
    """Where the sample-index cache goes (None: the data module's default, next to the data)."""


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (the paper's values are the defaults)."""

    lr: float = 3e-4
    """Peak learning rate."""
    min_lr: float = 3e-5
    """Learning rate at the end of the cosine decay."""
    lr_warmup_iters: int = 2000
    """Linear warmup steps; every stage has its own warmup."""
    lr_decay_style: str = "cosine"
    """"cosine", "linear" or "constant" (megatron-core OptimizerParamScheduler)."""
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


@dataclass
class TrainConfig:
    """Batch, budget, the patch recipe and the loop's intervals."""

    micro_batch_size: int = 1
    """Sequences per forward pass per data-parallel rank (both stages)."""
    global_batch_size: int = 8
    """Sequences per optimizer step in the token stage."""
    seq_length: int = 2048
    """Tokens per sample in the token stage (= its transformer positions T)."""
    patch_seq_length: Optional[int] = None
    """Tokens per patch-stage sample, T*K, a multiple of K; None: seq_length*K, i.e. the same T
    positions as the token stage (the paper: 2048 patches = 8192 tokens at K=4)."""
    train_iters: Optional[int] = None
    """Budget N in token-stage steps of global_batch_size*seq_length tokens (or train_tokens)."""
    train_tokens: Optional[int] = None
    """Budget in tokens; N = ceil(train_tokens / (global_batch_size*seq_length))."""
    patch_size: int = 1
    """K: tokens per patch in the patch stage (1 = token-level training only)."""
    patch_fraction: float = 0.0
    """lambda: fraction of the data (and of N) consumed at patch level; the paper uses 2/3."""
    patch_batch_policy: str = "same_tokens"
    """Patch-stage batch: "same_tokens" as the token stage (fewer, longer sequences; the paper's
    scripts, see DESIGN.md) or "same_sequences" (global_batch_size sequences, fewer steps)."""
    stage: str = "all"
    """Which stages this launch runs: "all" (patch, convert, token), "patch" or "token"."""
    seed: int = 1234
    """Seeds weights, data order and RNG."""
    bf16: Optional[bool] = None
    """bf16 parameters and compute; None: bf16 on GPU, fp32 on CPU."""
    log_interval: int = 1
    """Steps between log lines / metrics.jsonl train records."""
    eval_interval: Optional[int] = None
    """Steps between token-level validations (None: only at the end of each stage)."""
    eval_iters: int = 4
    """Validation batches (of global_batch_size token-level sequences) per evaluation."""


@dataclass
class CheckpointConfig:
    """Run directories."""

    save: Optional[str] = None
    """Run directory: SAVE/patch, SAVE/patch_weights, SAVE/token, metrics.jsonl, compute.json."""
    load: Optional[str] = None
    """Resume from this run directory (usually = save). A weights-only checkpoint
    (DIR/latest_checkpointed_iteration.txt = release) instead initialises the first stage."""
    save_interval: Optional[int] = None
    """Steps between checkpoints (None: only at the end of each stage)."""
    init_from: Optional[str] = None
    """Weights-only checkpoint the first stage starts from (default for --stage token:
    SAVE/patch_weights when it exists)."""
    tensorboard: bool = True
    """Write TensorBoard events to SAVE/tensorboard when tensorboard is installed."""


@dataclass
class RunConfig:
    """Everything one launch of tools/pretrain.py needs."""

    model: ModelConfig = field(default_factory=lambda: dataclasses.replace(PRESETS["tiny"]))
    model_preset: Optional[str] = "tiny"
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


SECTIONS = {
    "parallel": ParallelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "checkpoint": CheckpointConfig,
}

# flag -> (section, field); the type comes from the field's annotation.
FLAGS = {
    "--model": ("model", "preset"),
    "--num-layers": ("model", "num_layers"),
    "--hidden-size": ("model", "hidden_size"),
    "--ffn-hidden-size": ("model", "ffn_hidden_size"),
    "--num-attention-heads": ("model", "num_attention_heads"),
    "--num-query-groups": ("model", "num_query_groups"),
    "--max-position-embeddings": ("model", "max_seq_length"),
    "--transformer-impl": ("model", "transformer_impl"),
    "--tensor-model-parallel-size": ("parallel", "tensor_model_parallel_size"),
    "--pipeline-model-parallel-size": ("parallel", "pipeline_model_parallel_size"),
    "--virtual-pipeline-model-parallel-size": ("parallel", "virtual_pipeline_model_parallel_size"),
    "--sequence-parallel": ("parallel", "sequence_parallel"),
    "--data-path": ("data", "data_path"),
    "--split": ("data", "split"),
    "--tokenizer-model": ("data", "tokenizer_model"),
    "--align-documents": ("data", "align_documents"),
    "--data-cache-path": ("data", "cache_dir"),
    "--lr": ("optim", "lr"),
    "--min-lr": ("optim", "min_lr"),
    "--lr-warmup-iters": ("optim", "lr_warmup_iters"),
    "--lr-decay-style": ("optim", "lr_decay_style"),
    "--weight-decay": ("optim", "weight_decay"),
    "--adam-beta1": ("optim", "adam_beta1"),
    "--adam-beta2": ("optim", "adam_beta2"),
    "--adam-eps": ("optim", "adam_eps"),
    "--clip-grad": ("optim", "clip_grad"),
    "--use-distributed-optimizer": ("optim", "use_distributed_optimizer"),
    "--micro-batch-size": ("train", "micro_batch_size"),
    "--global-batch-size": ("train", "global_batch_size"),
    "--seq-length": ("train", "seq_length"),
    "--patch-seq-length": ("train", "patch_seq_length"),
    "--train-iters": ("train", "train_iters"),
    "--train-tokens": ("train", "train_tokens"),
    "--patch-size": ("train", "patch_size"),
    "--patch-fraction": ("train", "patch_fraction"),
    "--patch-batch-policy": ("train", "patch_batch_policy"),
    "--stage": ("train", "stage"),
    "--seed": ("train", "seed"),
    "--bf16": ("train", "bf16"),
    "--log-interval": ("train", "log_interval"),
    "--eval-interval": ("train", "eval_interval"),
    "--eval-iters": ("train", "eval_iters"),
    "--save": ("checkpoint", "save"),
    "--load": ("checkpoint", "load"),
    "--save-interval": ("checkpoint", "save_interval"),
    "--init-from": ("checkpoint", "init_from"),
}


def _field_type(cls, name):
    hints = typing.get_type_hints(cls)
    if name not in hints:
        valid = ", ".join(f.name for f in dataclasses.fields(cls))
        raise ValueError(f"unknown key {name!r} for {cls.__name__}; valid keys: {valid}")
    return hints[name]


def _coerce(value, tp, where: str):
    """Turn a YAML/CLI value into the field's type (YAML 1.1 reads `3e-4` as a string)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    try:
        if origin in (list, List):
            items = value if isinstance(value, (list, tuple)) else str(value).split()
            return [_coerce(v, args[0], where) for v in items]
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            if isinstance(value, str) and "/" in value:  # "2/3"
                num, den = value.split("/")
                return float(num) / float(den)
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from None
    return value


def _apply(obj, updates: dict, section: str):
    for key, value in updates.items():
        tp = _field_type(type(obj), key)
        setattr(obj, key, _coerce(value, tp, f"{section}.{key}"))


def _build_model(updates: dict) -> tuple:
    updates = dict(updates)
    preset = updates.pop("preset", "tiny")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    coerced = {k: _coerce(v, _field_type(ModelConfig, k), f"model.{k}") for k, v in updates.items()}
    if preset is None:
        return ModelConfig(**coerced), None
    return get_preset(preset, **coerced), preset


def config_from_dict(d: dict) -> RunConfig:
    """A RunConfig from nested dicts (a YAML file's content or `to_dict` output)."""
    d = dict(d or {})
    unknown = set(d) - set(SECTIONS) - {"model"}
    if unknown:
        raise ValueError(
            f"unknown config section(s) {sorted(unknown)}; valid: model, {', '.join(SECTIONS)}"
        )
    for name, section in d.items():
        if section is not None and not isinstance(section, dict):
            raise ValueError(f"config section {name!r} must be a mapping, got {section!r}")
    cfg = RunConfig()
    cfg.model, cfg.model_preset = _build_model(d.get("model") or {})
    for name, cls in SECTIONS.items():
        obj = cls()
        _apply(obj, d.get(name) or {}, name)
        if name == "parallel":
            obj.__post_init__()
        setattr(cfg, name, obj)
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
    p = argparse.ArgumentParser(
        description="Patch-level pretraining on megatron-core (launch with torchrun).",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML run config; flags below override it")
    for flag, (section, name) in FLAGS.items():
        cls = ModelConfig if section == "model" else SECTIONS[section]
        tp = str if name == "preset" else _field_type(cls, name)
        base = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Union else tp
        if base is bool:
            p.add_argument(flag, action="store_const", const=True, help=f"{section}.{name}")
        elif typing.get_origin(base) in (list, List):
            p.add_argument(flag, nargs="+", help=f"{section}.{name}")
        else:
            p.add_argument(flag, help=f"{section}.{name}")
    p.add_argument("--fp32", action="store_const", const=True, help="train.bf16 = false")
    p.add_argument("--no-tensorboard", action="store_const", const=True,
                   help="checkpoint.tensorboard = false")
    return p


def parse_config(argv=None) -> RunConfig:
    """Flags (and the YAML they name) -> RunConfig. Raises ValueError with the fix."""
    ns = vars(build_parser().parse_args(argv))
    d = load_yaml(ns.pop("config")) if "config" in ns else {}
    d = {k: dict(v or {}) for k, v in d.items()}
    if ns.pop("fp32", False):
        ns["bf16"] = False
    if ns.pop("no_tensorboard", False):
        d.setdefault("checkpoint", {})["tensorboard"] = False
    for flag, (section, name) in FLAGS.items():
        key = flag[2:].replace("-", "_")
        if key in ns:
            d.setdefault(section, {})[name] = ns[key]
    return config_from_dict(d)


def check(cfg: RunConfig) -> None:
    """Field-level validation that needs no data, processes or layout (ValueError with the fix)."""
    t, o = cfg.train, cfg.optim
    if (t.train_iters is None) == (t.train_tokens is None):
        raise ValueError("give exactly one budget: --train-iters N or --train-tokens N")
    if (t.train_iters or 1) < 1 or (t.train_tokens if t.train_tokens is not None else 1) < 1:
        raise ValueError("the training budget (--train-iters / --train-tokens) must be positive")
    for name in ("micro_batch_size", "global_batch_size", "seq_length", "log_interval", "eval_iters"):
        if getattr(t, name) < 1:
            raise ValueError(f"train.{name} must be >= 1, got {getattr(t, name)}")
    for name in ("eval_interval", "patch_seq_length"):
        if getattr(t, name) is not None and getattr(t, name) < 1:
            raise ValueError(f"train.{name} must be >= 1 or null, got {getattr(t, name)}")
    if cfg.checkpoint.save_interval is not None and cfg.checkpoint.save_interval < 1:
        raise ValueError("--save-interval must be >= 1 (omit it to save only at the end of a stage)")
    if t.global_batch_size % t.micro_batch_size:
        raise ValueError(
            f"--global-batch-size {t.global_batch_size} is not a multiple of "
            f"--micro-batch-size {t.micro_batch_size}"
        )
    if not isinstance(t.patch_size, int) or t.patch_size < 1:
        raise ValueError(f"--patch-size must be an integer >= 1, got {t.patch_size!r}")
    if t.patch_seq_length is not None and t.patch_seq_length % t.patch_size:
        fix = t.patch_seq_length - t.patch_seq_length % t.patch_size or t.patch_size
        raise ValueError(
            f"--patch-seq-length {t.patch_seq_length} is not a multiple of --patch-size "
            f"{t.patch_size}: a patch-stage sample must be whole patches; use e.g. {fix}"
        )
    if not 0.0 <= t.patch_fraction <= 1.0:
        raise ValueError(f"--patch-fraction must be in [0, 1] (the paper uses 2/3), got {t.patch_fraction}")
    if t.patch_batch_policy not in ("same_tokens", "same_sequences"):
        raise ValueError("--patch-batch-policy must be same_tokens or same_sequences")
    if t.stage not in ("all", "patch", "token"):
        raise ValueError(f"--stage must be all, patch or token, got {t.stage!r}")
    if t.stage == "patch" and (t.patch_size == 1 or t.patch_fraction == 0):
        raise ValueError("--stage patch needs --patch-size > 1 and --patch-fraction > 0")
    if o.lr <= 0 or o.min_lr < 0 or o.min_lr > o.lr:
        raise ValueError(f"need 0 <= --min-lr ({o.min_lr}) <= --lr ({o.lr}) and --lr > 0")
    if o.lr_warmup_iters < 0:
        raise ValueError("--lr-warmup-iters must be >= 0")
    if o.lr_decay_style not in ("cosine", "linear", "constant"):
        raise ValueError(f"--lr-decay-style must be cosine, linear or constant, got {o.lr_decay_style!r}")
    if not (0 <= o.adam_beta1 < 1 and 0 <= o.adam_beta2 < 1) or o.adam_eps <= 0:
        raise ValueError("Adam betas must be in [0, 1) and eps > 0")
    if o.weight_decay < 0 or o.clip_grad < 0:
        raise ValueError("--weight-decay and --clip-grad must be >= 0")
    if not cfg.data.data_path:
        raise ValueError("--data-path is required (a Megatron prefix, without .bin/.idx)")
    if not cfg.data.tokenizer_model:
        raise ValueError("--tokenizer-model is required (a SentencePiece .model)")
