"""Megatron-LM launch-line flags that are not config fields, and the defaults that differ.

A Megatron-LM launch line (its examples/gpt3 and examples/llama scripts) carries flags that
change nothing here, flags that only one value can honour, and flags this trainer cannot honour.
They are declared once, below, with the reason, so `--help` shows it and a refusal says it:

- ACCEPTED: taken and ignored, because what they ask for is already the case (or is a kernel
  choice that --transformer-impl makes); the launch prints them once with the reason.
- ONE_VALUE: honoured at one value (--ckpt-format torch_dist, --context-parallel-size 1, ...);
  another value is refused with the reason.
- REFUSED: a launch that gives one of them stops before anything is built, naming every refused
  flag and why.

MEGATRON_DEFAULTS lists every flag whose default here differs from Megatron-LM's (the paper's
recipe and LLaMA-style layers); `defaults_notice` says which of them a launch left unset.
"""
import argparse
import os
from typing import Dict, List, Optional, Tuple

# flag: (number of values, reason)
ACCEPTED: Dict[str, Tuple[int, str]] = {
    "--use-mcore-models": (0, "always the case: the model is megatron-core's GPTModel"),
    "--num-workers": (1, "samples are read in the training process from the memory-mapped "
                         ".bin files, so there are no data-loader worker processes"),
    "--attention-backend": (1, "the attention kernels follow --transformer-impl (Transformer "
                               "Engine picks its own backend; sdpa uses PyTorch's flash kernels)"),
    "--no-masked-softmax-fusion": (0, "no layer spec here uses megatron's masked-softmax kernel"),
    "--no-position-embedding": (0, "RoPE models have no learned position embedding"),
    "--cross-entropy-loss-fusion": (0, "the K-target loss is one fused function over the "
                                       "vocab-parallel logits already"),
    "--calculate-per-token-loss": (0, "always on: gradients are divided by the global number of "
                                      "loss tokens"),
    "--log-throughput": (0, "every log line has tokens/s and TFLOP/s"),
    "--no-create-attention-mask-in-dataloader": (0, "no attention masks are built: causal "
                                                    "attention runs without one"),
    "--tiktoken-pattern": (1, "only TikTokenizer reads it, and that tokenizer is not supported"),
    "--manual-gc": (0, "Python's garbage collector stays automatic (a speed knob, no effect on "
                       "the numbers)"),
    "--manual-gc-interval": (1, "see --manual-gc"),
    "--empty-unused-memory-level": (1, "the caching allocator is emptied between stages only (a "
                                       "memory knob, no effect on the numbers)"),
    "--no-mmap-bin-files": (0, "the .bin files are always memory-mapped (read-only, no copy)"),
}

# flag: (the one accepted value, reason)
ONE_VALUE: Dict[str, Tuple[str, str]] = {
    "--ckpt-format": ("torch_dist", "checkpoints are megatron-core dist_checkpointing (torch_dist) "
                                    "saves, which reshard across TP/PP/DP; the legacy torch and "
                                    "other formats are not written or read"),
    "--context-parallel-size": ("1", "context parallelism is not supported"),
    "--expert-model-parallel-size": ("1", "mixture-of-experts models are not supported"),
    "--rotary-percent": ("1.0", "RoPE rotates every channel of a head here (partial rotary is "
                                "not supported)"),
    "--kv-channels": ("hidden-size / num-attention-heads",
                      "the head size is hidden-size / num-attention-heads here"),
}

# flag: (number of values, reason)
REFUSED: Dict[str, Tuple[int, str]] = {
    "--fp16": (0, "fp16 needs loss scaling, which this trainer does not do; use --bf16 (the "
                  "paper's precision, and the default on a GPU)"),
    "--rampup-batch-size": (3, "batch-size ramp-up is not implemented: each stage has a fixed "
                               "batch (the patch stage the same tokens per step as the token stage)"),
    "--apply-layernorm-1p": (0, "zero-centred norm weights are not implemented by these layer "
                                "specs; leave it out (LLaMA's RMSNorm weight is plain)"),
    "--fp8-format": (1, "FP8 training is not supported (it needs Transformer Engine's FP8 "
                        "layers and recipe); use --bf16"),
    "--fp8-amax-history-len": (1, "FP8 training is not supported"),
    "--fp8-amax-compute-algo": (1, "FP8 training is not supported"),
    "--fp8-param-gather": (0, "FP8 training is not supported"),
    "--decoupled-lr": (1, "a separate learning rate for the embedding and output layers is not "
                          "implemented; the stages have --lr and --patch-lr"),
    "--decoupled-min-lr": (1, "see --decoupled-lr"),
    "--profile": (0, "profiling hooks are not implemented; run under nsys or torch.profiler"),
    "--profile-step-start": (1, "see --profile"),
    "--profile-step-end": (1, "see --profile"),
    "--use-pytorch-profiler": (0, "see --profile"),
    "--use-legacy-models": (0, "only megatron-core models exist here"),
    "--num-experts": (1, "mixture-of-experts models are not supported"),
    "--moe-router-topk": (1, "mixture-of-experts models are not supported"),
    "--moe-router-load-balancing-type": (1, "mixture-of-experts models are not supported"),
    "--moe-aux-loss-coeff": (1, "mixture-of-experts models are not supported"),
    "--moe-grouped-gemm": (0, "mixture-of-experts models are not supported"),
    "--moe-token-dispatcher-type": (1, "mixture-of-experts models are not supported"),
}

# Defaults that differ from Megatron-LM's (core_v0.16.1 megatron/training/arguments.py):
# (flag as a launch sets it, section, field, ours, Megatron-LM's).
MEGATRON_DEFAULTS: List[Tuple[str, str, str, str, str]] = [
    ("--lr", "optim", "lr", "3e-4", "none (required)"),
    ("--min-lr", "optim", "min_lr", "3e-5", "0"),
    ("--lr-warmup-iters", "optim", "lr_warmup_iters", "2000", "0"),
    ("--lr-decay-style", "optim", "lr_decay_style", "cosine", "linear"),
    ("--weight-decay", "optim", "weight_decay", "0.1", "0.01"),
    ("--adam-beta2", "optim", "adam_beta2", "0.95", "0.999"),
    ("--bf16", "train", "bf16", "on, on a GPU", "off (fp32)"),
    ("--micro-batch-size", "train", "micro_batch_size", "1", "none (required)"),
    ("--global-batch-size", "train", "global_batch_size", "8", "micro-batch x data-parallel size"),
    ("--seq-length", "train", "seq_length", "2048", "none (required)"),
    ("--eval-iters", "train", "eval_iters", "4", "100"),
    ("--eval-interval", "train", "eval_interval", "none, at the end of each stage", "1000"),
    ("--log-interval", "logging", "log_interval", "1", "100"),
    ("--tensorboard-dir", "logging", "tensorboard_dir", "SAVE/tensorboard", "none, no TensorBoard"),
    ("--untie-embeddings-and-output-weights", "model", "tie_embeddings", "on", "off, tied"),
    ("--attention-dropout", "model", "attention_dropout", "0", "0.1"),
    ("--hidden-dropout", "model", "hidden_dropout", "0", "0.1"),
    ("--position-embedding-type", "model", "position_embedding_type", "rope", "learned_absolute"),
    ("--normalization", "model", "normalization", "RMSNorm", "LayerNorm"),
    ("--swiglu", "model", "swiglu", "on", "off, GeLU"),
    ("--disable-bias-linear", "model", "add_bias_linear", "on", "off, biases"),
    ("--transformer-impl", "model", "transformer_impl", "auto", "transformer_engine"),
]

def _dest(name: str) -> str:
    return "megatron_lm_" + name.lstrip("-").replace("-", "_")  # no dot: not a config section


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The Megatron-LM flags of this module, in one argument group with their reasons."""
    group = parser.add_argument_group(
        "Megatron-LM flags that are not settings here",
        "Accepted so Megatron-LM launch lines run: no effect (the reason says why), one value "
        "only, or refused with the reason.")
    for name, (nargs, reason) in ACCEPTED.items():
        kw = {"action": "store_true"} if nargs == 0 else {"metavar": "X"}
        group.add_argument(name, dest=_dest(name), help=f"Accepted, no effect: {reason}.", **kw)
    for name, (value, reason) in ONE_VALUE.items():
        group.add_argument(name, dest=_dest(name), metavar="X",
                           help=f"Accepted at {value} only: {reason}.")
    for name, (nargs, reason) in REFUSED.items():
        kw = {"action": "store_true"} if nargs == 0 else {"nargs": nargs, "metavar": "X"} \
            if nargs > 1 else {"metavar": "X"}
        group.add_argument(name, dest=_dest(name), help=f"Refused: {reason}.", **kw)


def _given(ns: argparse.Namespace) -> Dict[str, object]:
    """{flag: value} of this module's flags present on the command line."""
    out = {}
    for name in (*ACCEPTED, *ONE_VALUE, *REFUSED):
        if hasattr(ns, _dest(name)):
            out[name] = getattr(ns, _dest(name))
    return out


def check(ns: argparse.Namespace, d: dict) -> List[str]:
    """Refuse what cannot be honoured (every such flag at once, with the reason); return the notes
    of the accepted no-op flags. `d` is the merged YAML + flag sections."""
    given = _given(ns)
    problems = [f"{name}: {REFUSED[name][1]}" for name in given if name in REFUSED]
    for name in given:
        if name not in ONE_VALUE:
            continue
        value, reason = ONE_VALUE[name][0], ONE_VALUE[name][1]
        got = str(given[name])
        if name == "--kv-channels":
            ok = _kv_channels_ok(got, d)
        elif name == "--rotary-percent":
            ok = _is_number(got, 1.0)
        elif value == "1":
            ok = _is_number(got, 1.0)
        else:
            ok = got == value
        if not ok:
            problems.append(f"{name} {got}: {reason} (accepted: {value})")
    optim = d.get("optim", {})
    for other in ("lr_warmup_fraction", "lr_warmup_samples"):
        if optim.get(other) is not None and "lr_warmup_iters" in optim and not _is_number(
                optim["lr_warmup_iters"], 0.0):
            flag = "--" + other.replace("_", "-")
            problems.append(f"{flag} and --lr-warmup-iters {optim['lr_warmup_iters']}: give one warmup "
                            "(as in Megatron-LM)")
    if problems:
        raise ValueError("this launch asks for what this trainer cannot do:\n  " + "\n  ".join(problems))
    return [f"{name}: {ACCEPTED[name][1]}" for name in given if name in ACCEPTED]


def _is_number(text, target: float) -> bool:
    try:
        return float(text) == target
    except (TypeError, ValueError):
        return False


def _kv_channels_ok(text: str, d: dict) -> bool:
    model = d.get("model", {})
    try:
        heads, hidden = int(model["num_attention_heads"]), int(model["hidden_size"])
        return int(text) * heads == hidden
    except (KeyError, TypeError, ValueError):
        return True  # a preset or YAML model: its head size is checked when the model is built


def given_fields(d: dict) -> frozenset:
    """"section.field" of every setting the launch gave (YAML or flag)."""
    return frozenset(f"{section}.{key}" for section, values in d.items() for key in (values or {}))


def defaults_notice(cfg) -> Optional[str]:
    """The defaults that differ from Megatron-LM's and that this launch left unset, or None."""
    from megatron_patch import device

    given = getattr(cfg, "given", None)
    if given is None:
        return None
    preset = getattr(cfg, "model_preset", None)
    o = cfg.optim
    unset = []
    for flag, section, name, ours, theirs in MEGATRON_DEFAULTS:
        if f"{section}.{name}" in given or (section == "model" and preset):
            continue
        if name == "lr_warmup_iters" and (o.lr_warmup_fraction is not None or o.lr_warmup_samples is not None):
            continue
        if name == "bf16" and not device.on_gpu():
            continue  # fp32 on a CPU, as Megatron-LM
        unset.append(f"{flag} {ours} (Megatron-LM: {theirs})")
    if not unset:
        return None
    return "defaults that differ from Megatron-LM's, not set on this launch: " + "; ".join(unset)


def print_notes(cfg) -> None:
    """Print, on rank 0, the defaults notice and the accepted no-op flags, once per launch."""
    if int(os.environ.get("RANK", 0)) != 0 or getattr(cfg, "notes_printed", False):
        return
    cfg.notes_printed = True
    notice = defaults_notice(cfg)
    if notice:
        print(notice, flush=True)
    for note in getattr(cfg, "megatron_notes", []):
        print(f"accepted, no effect: {note}", flush=True)
