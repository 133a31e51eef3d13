"""The GPU path on one GPU, in one command: environment, bf16 numerics, speed, a training run.

    python tools/gpu_check.py --output gpu_check.json            # one GPU; < 5 min on H100/H200
    python tools/gpu_check.py --smoke --output /tmp/smoke.json    # same code paths, CPU, toy sizes

Parts (each a function returning a dict with "passed" -- True/False, or None where the part
only measures -- and "seconds"):

- `environment`: torch, CUDA, GPU, whether Transformer Engine / flash-attn / apex import, the
  layer spec `megatron_patch.layers.resolve_impl("auto")` picks.
- `sdpa_flash`: causal bf16 attention runs under `sdpa_kernel(SDPBackend.FLASH_ATTENTION)`
  (no other backend allowed), both as a bare SDPA call and through the model's own core
  attention module (`SDPAttention`), and matches the math backend.
- `correctness`: a small model's loss and gradients in bf16 (megatron-core's Float16Module)
  against the same weights in fp32, at K=1 and K=4.
- `speed`: forward+backward of the 370M preset in bf16 at T positions, K=1 and K=4 (same T, so
  K=4 consumes 4x the tokens): tokens/s, model TFLOP/s counted as Megatron-LM counts them
  (`megatron_lm_flops`), MFU against the bf16 dense peak, peak memory, the K=4/K=1 ratio.
- `training`: the real trainer (the training API tools/pretrain.py calls: `resolve`, `Trainer`)
  on a mock .bin/.idx corpus, K=4 then K=1, 50 steps: bf16 uninterrupted; bf16 stopped mid-stage
  by --exit-interval (which saves a checkpoint) and relaunched with --load (must reproduce the
  uninterrupted losses); fp32 (bf16 must track it within 3%, step for step).

`run_all` runs every part, catching a failing part's exception into its result so one run on a
rented GPU reports everything it can; `megatron_patch.cli.gpu_check` prints it as a table.
"""
import contextlib
import dataclasses
import importlib
import importlib.metadata
import io
import math
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, Optional

import numpy as np
import torch

from megatron_patch import device
from megatron_patch.flags import to_argv
from megatron_patch.config import ModelConfig, ParallelConfig, get_preset

LOSS_TOLERANCE = 0.03
"""bf16 vs fp32: relative loss difference allowed (the trainer's losses, step for step)."""
GRAD_TOLERANCE = 0.05
"""bf16 vs fp32: ||g16 - g32|| / ||g32|| allowed per parameter. bf16 rounds to 8 significant
bits (relative error u = 2^-8); a weight gradient carries a few such roundings from every layer
it crosses (measured up to 1.2% = 3u on CPU, tests/unit/model/test_patch_bf16.py); GPU kernels
accumulate in another order, hence the margin."""
RESUME_TOLERANCE = 1e-3
"""Resumed vs uninterrupted run: relative loss difference allowed. Bitwise on CPU; GPU kernels
(cuBLAS split-K, attention backward) may reduce in a different order after a restart."""

@dataclasses.dataclass
class Sizes:
    """How big each part runs: the GPU settings, or toy ones for the CPU smoke run."""

    sdpa_shape: tuple
    """(batch, heads, sequence, head_dim) of the bare SDPA check."""
    correctness_preset: str
    correctness_overrides: dict
    correctness_positions: int
    correctness_batch: int
    speed_preset: str
    speed_positions: int
    speed_micro_batch: int
    speed_warmup: int
    speed_iters: int
    train_flags: dict
    """Flags of the training part (tokenizer, data and save are added)."""
    train_tokens: int
    """Mock corpus size in tokens."""
    train_iters: int = 50
    """Steps of the run: half at K=4, half at K=1."""
    stop_at_patch_step: int = 15
    """--exit-interval of the interrupted launch: it saves and stops at this patch-stage step."""
    save_interval: int = 10


GPU_SIZES = Sizes(
    sdpa_shape=(4, 16, 2048, 64),
    correctness_preset="cpu-small", correctness_overrides={"vocab_size": 32000},
    correctness_positions=512, correctness_batch=4,
    speed_preset="370m", speed_positions=2048, speed_micro_batch=8, speed_warmup=3, speed_iters=10,
    train_flags={"--model": "cpu-small", "--hidden-size": 512, "--ffn-hidden-size": 1376,
                 "--num-layers": 8, "--num-attention-heads": 8, "--seq-length": 1024,
                 "--micro-batch-size": 8, "--global-batch-size": 32},
    train_tokens=3_000_000,
    save_interval=20,  # ~0.4 GB per checkpoint (fp32 main weights + Adam); the stop saves at 15
)

SMOKE_SIZES = Sizes(
    sdpa_shape=(1, 2, 128, 32),
    correctness_preset="tiny", correctness_overrides={"vocab_size": 512},
    correctness_positions=16, correctness_batch=2,
    speed_preset="tiny", speed_positions=64, speed_micro_batch=2, speed_warmup=1, speed_iters=2,
    train_flags={"--model": "tiny", "--num-layers": 2, "--seq-length": 64, "--patch-seq-length": 64,
                 "--micro-batch-size": 2, "--global-batch-size": 4},
    train_tokens=40_000,
)


# ----------------------------------------------------------------------------- FLOPs


# ----------------------------------------------------------------------------- parts


def _import_version(name: str) -> dict:
    try:
        module = importlib.import_module(name)
    except Exception as err:  # ImportError, or a broken binary extension (OSError, ...)
        return {"ok": False, "error": f"{type(err).__name__}: {str(err)[:200]}"}
    return {"ok": True, "version": getattr(module, "__version__", None)}


def environment() -> dict:
    """What the machine has, and which layer path the model takes on it."""
    from megatron_patch.layers.spec import resolve_impl

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": device.on_gpu(),
        "megatron_core": importlib.metadata.version("megatron-core"),
        "transformer_engine": _import_version("transformer_engine.pytorch"),
        "flash_attn": _import_version("flash_attn"),
        "apex": _import_version("apex"),
        "layer_spec": resolve_impl("auto"),
    }
    if device.on_gpu():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        out.update(
            gpu=props.name,
            gpu_memory_gib=props.total_memory / 2**30,
            compute_capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            gpu_count=torch.cuda.device_count(),
        )
    else:
        out.update(gpu=None, cpu_threads=torch.get_num_threads())
    out["passed"] = None
    return out


def sdpa_flash(sizes: Sizes) -> dict:
    """Causal bf16 attention with only the flash backend allowed: a bare SDPA call and the
    model's core attention (which passes `is_causal=True` and no mask so flash stays eligible)."""
    import torch.nn.functional as F
    from megatron.core.transformer.enums import AttnMaskType
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from megatron_patch.layers.attention import SDPAttention

    dev = device.current()
    b, nh, s, hd = sizes.sdpa_shape
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(b, nh, s, hd, generator=g).to(dev, torch.bfloat16).requires_grad_()
               for _ in range(3))
    out = {"shape": [b, nh, s, hd], "dtype": "bfloat16", "backend": "FLASH_ATTENTION"}
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        flash = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        flash.float().sum().backward()
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    out["bare_call"] = True
    out["max_abs_diff_vs_math_fp32"] = (flash.float() - ref).abs().max().item()
    out["grad_finite"] = bool(torch.isfinite(q.grad).all().item())

    # The model's module, built from the config of the model it serves ([s, b, heads, hn]).
    cfg = get_preset("370m" if device.on_gpu() else "tiny").transformer_config(
        ParallelConfig(), params_dtype=torch.bfloat16)
    attn = SDPAttention(cfg, layer_number=1, attn_mask_type=AttnMaskType.causal,
                        attention_type="self").to(dev)
    hn = cfg.kv_channels
    heads = cfg.num_attention_heads
    qs = torch.randn(min(s, 512), 2, heads, hn, generator=g).to(dev, torch.bfloat16)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        ctx = attn(qs, qs, qs, attention_mask=None)
    out["model_core_attention"] = list(ctx.shape) == [qs.size(0), 2, heads * hn]
    # bf16 output against an fp32 reference: within a few bf16 roundings (u = 2^-8) of values
    # that are averages of unit-variance inputs (|x| < ~4).
    out["passed"] = (out["bare_call"] and out["model_core_attention"] and out["grad_finite"]
                     and out["max_abs_diff_vs_math_fp32"] < 0.05)
    return out


def _relerr(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def correctness(sizes: Sizes) -> dict:
    """Loss and gradients of one batch, bf16 (Float16Module) vs fp32, same weights, K=1 and K=4."""
    from megatron.core.transformer.module import Float16Module

    from megatron_patch import distributed
    from megatron_patch.model import build_model

    dev = device.current()
    cfg = get_preset(sizes.correctness_preset, **sizes.correctness_overrides)
    rows = []
    for K in (1, 4):
        distributed.set_seed(1234)
        m32 = build_model(cfg, ParallelConfig(), patch_size=K).to(dev)
        m16 = build_model(cfg, ParallelConfig(), patch_size=K, params_dtype=torch.bfloat16)
        m16.load_state_dict(m32.state_dict())
        m16 = Float16Module(m16.config, m16.to(dev))
        g = torch.Generator().manual_seed(K)
        shape = (sizes.correctness_batch, sizes.correctness_positions * K)
        ids = torch.randint(0, cfg.vocab_size, shape, generator=g).to(dev)
        labels = torch.randint(0, cfg.vocab_size, shape, generator=g).to(dev)
        losses = {}
        for name, model in (("fp32", m32), ("bf16", m16)):
            loss = model(ids, None, None, labels=labels)
            loss.mean().backward()
            losses[name] = (loss.dtype, loss.mean().item())
        params16 = dict(m16.module.named_parameters())
        grad_err = {n: _relerr(params16[n].grad, p.grad) for n, p in m32.named_parameters()}
        worst = max(grad_err, key=grad_err.get)
        l32, l16 = losses["fp32"][1], losses["bf16"][1]
        rel = abs(l16 - l32) / abs(l32)
        rows.append({
            "patch_size": K, "loss_fp32": l32, "loss_bf16": l16, "loss_rel_diff": rel,
            "loss_dtype_bf16_model": str(losses["bf16"][0]).replace("torch.", ""),
            "grad_rel_err_max": grad_err[worst], "grad_rel_err_worst_param": worst,
            "passed": (rel <= LOSS_TOLERANCE and grad_err[worst] <= GRAD_TOLERANCE
                       and losses["bf16"][0] == torch.float32),
        })
        del m32, m16
        device.empty_cache()
    return {"preset": sizes.correctness_preset, "positions": sizes.correctness_positions,
            "micro_batch_size": sizes.correctness_batch, "loss_tolerance": LOSS_TOLERANCE,
            "grad_tolerance": GRAD_TOLERANCE, "rows": rows, "passed": all(r["passed"] for r in rows)}


def speed(sizes: Sizes) -> dict:
    """Forward+backward throughput in bf16 at K=1 and K=4 with the same T positions."""
    from megatron.core.transformer.module import Float16Module

    from megatron_patch import distributed
    from megatron_patch.config import validate_for
    from megatron_patch.model import build_model
    from megatron_patch.training.flops import (
        MEGATRON_LM_FLOPS_FORMULA, PEAK_TFLOPS, device_peak_tflops, flops_per_position, megatron_lm_flops,
    )

    dev = device.current()
    cfg = get_preset(sizes.speed_preset)
    T, mbs = sizes.speed_positions, sizes.speed_micro_batch
    peak = device_peak_tflops(bf16=True)
    # Weights initialised on the GPU itself: megatron-core's CPU initialisation of 370M
    # parameters takes seconds per model and only matters for TP-independent weights.
    par = ParallelConfig(use_cpu_initialization=not device.on_gpu())
    rows = []
    for K in (1, 4):
        validate_for(cfg, par, K, T * K)
        distributed.set_seed(1234)
        inner = build_model(cfg, par, patch_size=K, params_dtype=torch.bfloat16)
        model = Float16Module(inner.config, inner.to(dev))
        g = torch.Generator().manual_seed(K)
        seq = torch.randint(0, cfg.vocab_size, (mbs, (T + 1) * K), generator=g)
        tokens, labels = seq[:, : T * K].to(dev), seq[:, K:].to(dev)
        device.synchronize()
        device.reset_peak_memory()
        times = []
        for i in range(sizes.speed_warmup + sizes.speed_iters):
            model.zero_grad(set_to_none=True)
            device.synchronize()  # host-device sync: honest per-step timing
            start = time.perf_counter()
            model(tokens, None, None, labels=labels).mean().backward()
            device.synchronize()
            if i >= sizes.speed_warmup:
                times.append(time.perf_counter() - start)
        step_s = statistics.median(times)
        flops = megatron_lm_flops(cfg, mbs, T)
        tflops = flops / step_s / 1e12
        rows.append({
            "patch_size": K, "step_s": step_s, "tokens_per_s": mbs * T * K / step_s,
            "positions_per_s": mbs * T / step_s, "flops_per_step": flops, "tflops": tflops,
            "mfu": tflops / peak if peak else None, "peak_memory_gib": device.max_memory_gib(),
            "flops_py_per_step": mbs * T * flops_per_position(cfg, K, T),
        })
        del model, inner, tokens, labels
        device.empty_cache()
    return {
        "preset": sizes.speed_preset, "params_m": cfg.num_params() / 1e6, "dtype": "bfloat16",
        "positions": T, "micro_batch_size": mbs, "warmup": sizes.speed_warmup,
        "iters": sizes.speed_iters, "layer_spec": _layer_spec(cfg),
        "rows": rows, "ratio_k4_over_k1": rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"],
        "ideal_ratio": 4.0, "paper_ratio_a100": 3.5,
        "flops_formula": MEGATRON_LM_FLOPS_FORMULA,
        "peak_tflops_bf16_dense": {k: v["bf16"] for k, v in PEAK_TFLOPS.items()},
        "device_peak_tflops": peak, "passed": None,
    }


def _layer_spec(cfg: ModelConfig) -> str:
    from megatron_patch.layers.spec import resolve_impl

    return resolve_impl(cfg.transformer_impl)


# ----------------------------------------------------------------------------- training run


def write_mock_corpus(directory: str, num_tokens: int, seed: int = 0) -> tuple:
    """(data prefix, tokenizer model) of a learnable mock corpus in `directory`.

    The tokenizer is a small sentencepiece BPE trained on generated words (it only supplies the
    vocabulary size and EOD id). The documents are random token ids drawn as 16-token phrases
    from a bank of 64, so the loss can fall from log(V) to about log(64)/16 per token; written
    with megatron-core's IndexedDatasetBuilder (.bin/.idx).
    """
    import sentencepiece
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_patch.data import load_tokenizer

    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, int(rng.integers(2, 9)))) for _ in range(3000)]
    sentences = (" ".join(rng.choice(words, 12)) for _ in range(4000))
    tok_prefix = os.path.join(directory, "mock_tokenizer")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=sentences, model_prefix=tok_prefix, model_type="bpe", vocab_size=1000,
        hard_vocab_limit=False, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2, num_threads=1,
    )
    tok_path = tok_prefix + ".model"
    tok = load_tokenizer(tok_path)
    bank = rng.integers(3, tok.vocab_size, size=(64, 16))
    prefix = os.path.join(directory, "mock_text_document")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    written = 0
    while written < num_tokens:
        phrases = bank[rng.integers(0, len(bank), int(rng.integers(4, 40)))]
        doc = np.append(phrases.reshape(-1), tok.eod).astype(np.int64)
        builder.add_document(doc, [len(doc)])
        written += len(doc)
    builder.finalize(prefix + ".idx")
    return prefix, tok_path


def _train_flags(sizes: Sizes, prefix: str, tok: str, save: str, dtype: str) -> list:
    flags = dict(sizes.train_flags)
    flags.update({
        "--data-path": prefix, "--tokenizer-model": tok, "--save": save,
        "--train-iters": sizes.train_iters, "--patch-size": 4, "--patch-fraction": 0.5,
        "--lr": 1e-3, "--min-lr": 1e-4, "--lr-warmup-iters": 5, "--split": "90,10,0",
        "--eval-iters": 2, "--log-interval": 1, "--save-interval": sizes.save_interval,
        "--seed": 1234, "--use-distributed-optimizer": True, "--no-tensorboard": True,
        f"--{dtype}": True,
    })
    return to_argv(flags)


class _Tee(io.TextIOBase):
    """Writes to `stream` and keeps a copy (the trainer's log lines of one launch)."""

    def __init__(self, stream):
        self.stream = stream
        self.parts = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def text(self) -> str:
        return "".join(self.parts)


def _train_losses(run_dir: str) -> Dict[str, float]:
    from megatron_patch.training.metrics import read_metrics

    return {f"{r['stage']}:{r['step']}": r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


def _max_rel(a: Dict[str, float], b: Dict[str, float]) -> float:
    if sorted(a) != sorted(b):
        return math.inf
    return max(abs(a[k] - b[k]) / abs(b[k]) for k in b)


def _launch_trainer(argv: list) -> int:
    """One launch through the training API that tools/pretrain.py calls, in this process: 0 when
    every stage finished, preemption's EXIT_CODE when it stopped early on purpose (after saving).
    Other errors raise. Each launch sets up its own process groups and tears them down."""
    from megatron_patch import distributed
    from megatron_patch.training import Trainer, parse_config, resolve
    from megatron_patch.training.preemption import EXIT_CODE, ExitRequested

    try:
        Trainer(resolve(parse_config(argv))).train()
        return 0
    except ExitRequested:
        return EXIT_CODE
    finally:
        distributed.destroy()


def training(sizes: Sizes, workdir: str) -> dict:
    """The trainer on mock data, launched as `tools/pretrain.py` launches it (parse_config,
    resolve, Trainer.train, in this process): bf16 uninterrupted (A); bf16 stopped by
    --exit-interval mid-stage, which saves a checkpoint, then relaunched with --load (B); fp32 (C)."""
    from megatron_patch.training.preemption import EXIT_CODE

    t0 = time.perf_counter()
    prefix, tok = write_mock_corpus(os.path.join(workdir, "data"), sizes.train_tokens)
    seconds = {"write_corpus": time.perf_counter() - t0}
    dirs = {name: os.path.join(workdir, name) for name in ("bf16", "bf16_resumed", "fp32")}
    codes = {}

    logs = {}

    def launch(name, save, dtype, *extra):
        start = time.perf_counter()
        tee = _Tee(sys.stdout)
        with contextlib.redirect_stdout(tee):
            codes[name] = _launch_trainer(_train_flags(sizes, prefix, tok, save, dtype) + list(extra))
        logs[name] = tee.text()
        seconds[name] = time.perf_counter() - start

    stop = sizes.stop_at_patch_step
    launch("bf16", dirs["bf16"], "bf16")
    launch("bf16_stopped", dirs["bf16_resumed"], "bf16", "--exit-interval", str(stop))
    launch("bf16_resumed", dirs["bf16_resumed"], "bf16", "--load", dirs["bf16_resumed"])
    launch("fp32", dirs["fp32"], "fp32")
    expected_codes = {"bf16": 0, "bf16_stopped": EXIT_CODE, "bf16_resumed": 0, "fp32": 0}

    # The relaunch must continue from the saved step, not start over (which, seeded alike,
    # would log the same losses): the trainer says where it resumed.
    resumed = re.search(r"patch stage: resumed from (\S+) at step (\d+)", logs["bf16_resumed"])
    a, b, c = (_train_losses(dirs[n]) for n in ("bf16", "bf16_resumed", "fp32"))
    steps = sizes.train_iters // 2
    expected = {f"patch:{s}" for s in range(1, steps + 1)} | {f"token:{s}" for s in range(1, steps + 1)}
    resume_rel, dtype_rel = _max_rel(b, a), _max_rel(a, c)
    first, last = a.get("patch:1"), a.get(f"token:{steps}")
    out = {
        "flags": _train_flags(sizes, "DATA", "TOKENIZER", "SAVE", "bf16"),
        "steps": {"patch (K=4)": steps, "token (K=1)": steps},
        "exit_codes": codes, "exit_codes_expected": expected_codes,
        "stopped_and_resumed_at": f"patch:{stop}",
        "resumed_from_checkpoint": resumed.group(1) if resumed else None,
        "resumed_at_step": int(resumed.group(2)) if resumed else None,
        "all_steps_logged": set(a) == expected,
        "loss_first": first, "loss_last": last,
        "loss_fell": first is not None and last is not None and last < first,
        "resume_max_rel_diff": resume_rel, "resume_bitwise": a == b,
        "resume_tolerance": RESUME_TOLERANCE,
        "bf16_vs_fp32_max_rel_diff": dtype_rel, "bf16_vs_fp32_tolerance": LOSS_TOLERANCE,
        "losses": {"bf16": a, "bf16_resumed": b, "fp32": c},
        "seconds_by_run": seconds,
    }
    out["passed"] = (codes == expected_codes and out["resumed_at_step"] == stop
                     and out["all_steps_logged"] and out["loss_fell"] and resume_rel <= RESUME_TOLERANCE
                     and dtype_rel <= LOSS_TOLERANCE)
    return out


# ----------------------------------------------------------------------------- all parts


def _timed_part(fn: Callable[[], dict]) -> dict:
    start = time.perf_counter()
    try:
        out = fn()
    except Exception as err:  # one failing part must not hide what the others find
        out = {"passed": False, "error": f"{type(err).__name__}: {err}",
               "traceback": traceback.format_exc()[-4000:]}
    device.empty_cache()  # a part that failed (e.g. out of memory) leaves nothing behind
    out["seconds"] = time.perf_counter() - start
    return out


PARTS = ("environment", "sdpa_flash", "correctness", "speed", "training")


def run_all(smoke: bool, workdir: Optional[str] = None, parts=PARTS,
            speed_micro_batch: Optional[int] = None) -> dict:
    """Every part in order; returns the report (see tools/gpu_check.py and docs/gpu.md)."""
    from megatron_patch import distributed

    if not smoke and not device.on_gpu():
        raise ValueError("no CUDA device: the GPU check needs one GPU; run with --smoke for the "
                         "CPU version of the same code paths")
    sizes = dataclasses.replace(SMOKE_SIZES if smoke else GPU_SIZES)
    if speed_micro_batch:
        sizes.speed_micro_batch = speed_micro_batch
    start = time.perf_counter()
    report = {"schema": 1, "mode": "smoke" if smoke else "gpu",
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "parts": {}}
    own_dir = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="gpu-check-")
    try:
        t0 = time.perf_counter()
        # A world of one for the model-level parts. Each trainer launch of the training part
        # sets up its own and tears it down at exit, so that part runs last.
        distributed.initialize(ParallelConfig(), seed=1234)
        report["init_seconds"] = time.perf_counter() - t0
        steps = {
            "environment": environment,
            "sdpa_flash": lambda: sdpa_flash(sizes),
            "correctness": lambda: correctness(sizes),
            "speed": lambda: speed(sizes),
            "training": lambda: training(sizes, workdir),
        }
        for name in PARTS:  # in this order, whatever the order asked for
            if name in parts:
                report["parts"][name] = _timed_part(steps[name])
    finally:
        distributed.destroy()
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    results = [p["passed"] for p in report["parts"].values()]
    report["passed"] = all(r is not False for r in results)
    report["total_seconds"] = time.perf_counter() - start
    return report
