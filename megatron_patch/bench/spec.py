"""Layer specs side by side: forward+backward tokens/s and peak memory of "sdpa" vs "local".

"sdpa" is this project's TE-free default (PyTorch scaled_dot_product_attention + SP RMSNorm);
"local" is megatron-core's plain local spec (unfused DotProductAttention, O(s^2) memory).
Same model, weights and batch for each spec; timings alternate between the specs round by
round so machine noise hits both alike.

    distributed.initialize(ParallelConfig())                 # a world of one
    res = compare_specs(("sdpa", "local"), "cpu-small", 4, [512, 2048])
    print(format_table(res))                                  # tools/bench_spec.py

Memory: on a GPU, the allocator's peak during a step. On CPU there are no allocator
statistics, so each (spec, T) runs once more in a child process
(`python -m megatron_patch.cli.bench_spec --memory-child`) with glibc's dynamic mmap threshold
off (freed tensors go back to the OS, so RSS follows live memory); the figure is the peak RSS
of a first forward+backward (grads and one-time buffers included) above the RSS before it.
"saved" is the exact size of the activations autograd keeps for backward (weights excluded).
"""
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from megatron_patch import device, distributed
from megatron_patch.config import ParallelConfig, get_preset, validate_for
from megatron_patch.model import build_model

MiB = 2**20


def build(preset, impl, patch_size, positions, micro_batch_size, dtype, dev):
    """A PatchGPTModel with layer spec `impl` and one fixed batch of T*K tokens per sample."""
    cfg = get_preset(preset, transformer_impl=impl)
    # The benchmark may go past the preset's context; RoPE has no limit.
    if cfg.max_position_embeddings is not None and positions > cfg.max_position_embeddings:
        cfg = get_preset(preset, transformer_impl=impl, max_position_embeddings=positions)
    par = ParallelConfig()
    validate_for(cfg, par, patch_size, positions * patch_size)
    distributed.set_seed(1234)
    model = build_model(cfg, par, patch_size=patch_size, params_dtype=dtype).to(dev)
    g = torch.Generator().manual_seed(0)
    seq = torch.randint(0, cfg.vocab_size, (micro_batch_size, (positions + 1) * patch_size), generator=g)
    K = patch_size
    return model, (seq[:, : positions * K].to(dev), seq[:, K:].to(dev))


def fwd_bwd(model, tokens, labels):
    model.zero_grad(set_to_none=True)
    model(tokens, None, None, labels=labels).float().mean().backward()


def saved_activation_bytes(model, tokens, labels) -> int:
    """Bytes of the distinct non-parameter storages autograd saves during one forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(tokens, None, None, labels=labels).float().mean()
    del loss
    return sum(seen.values())


def time_specs(impls, preset, patch_size, positions, micro_batch_size, iters, warmup, dtype, dev):
    """Median forward+backward seconds per spec, the specs alternating within each round."""
    runs = {impl: build(preset, impl, patch_size, positions, micro_batch_size, dtype, dev)
            for impl in impls}
    first = runs[impls[0]][0]
    for model, _ in runs.values():  # identical weights for every spec (same checkpoint keys)
        model.load_state_dict(first.state_dict())
    times = {impl: [] for impl in impls}
    for i in range(warmup + iters):
        for impl in impls:
            model, batch = runs[impl]
            device.synchronize()  # host-device sync: needed for honest GPU timings
            t0 = time.perf_counter()
            fwd_bwd(model, *batch)
            device.synchronize()
            if i >= warmup:
                times[impl].append(time.perf_counter() - t0)
    saved = {impl: saved_activation_bytes(runs[impl][0], *runs[impl][1]) for impl in impls}
    return {impl: statistics.median(t) for impl, t in times.items()}, saved


def _rss_kib(field):
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def peak_memory_here(impl, preset, patch_size, positions, micro_batch_size, dtype, dev) -> int:
    """Peak bytes of the first forward+backward above what was allocated before it."""
    model, batch = build(preset, impl, patch_size, positions, micro_batch_size, dtype, dev)
    if dev.type == "cuda":
        device.synchronize()
        device.reset_peak_memory()
        base = torch.cuda.memory_allocated()
        fwd_bwd(model, *batch)
        device.synchronize()
        return int(device.max_memory_gib() * 2**30) - base
    base = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    fwd_bwd(model, *batch)
    return (_rss_kib("VmHWM") - base) * 1024


def peak_memory(impl, preset, patch_size, positions, micro_batch_size, dtype, dev) -> int:
    if dev.type == "cuda":
        return peak_memory_here(impl, preset, patch_size, positions, micro_batch_size, dtype, dev)
    cmd = [sys.executable, "-m", "megatron_patch.cli.bench_spec", "--memory-child", "--impls", impl,
           "--preset", preset, "--patch-size", str(patch_size), "--positions", str(positions),
           "--micro-batch-size", str(micro_batch_size)]
    # A world of one of its own: drop the rendezvous variables this process's world set.
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"memory child {cmd} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_bytes"]


def compare_specs(impls=("sdpa", "local"), preset="cpu-small", patch_size=4, positions=(512, 2048),
                  micro_batch_size=1, iters=3, warmup=1, dtype=None, dev=None):
    """{"preset", "patch_size", ..., "rows": [{positions, impl, step_s, tokens_per_s, speed_vs_first,
    peak_mib, saved_mib}]}; needs an initialized world of one
    (`distributed.initialize(ParallelConfig())`). The first impl is the baseline."""
    dev = dev or device.current()
    dtype = dtype or device.compute_dtype(None)
    impls = list(impls)
    rows = []
    for T in positions:
        step_s, saved = time_specs(impls, preset, patch_size, T, micro_batch_size, iters, warmup,
                                   dtype, dev)
        for impl in impls:
            peak = peak_memory(impl, preset, patch_size, T, micro_batch_size, dtype, dev)
            tok_s = micro_batch_size * T * patch_size / step_s[impl]
            rows.append({
                "positions": T, "impl": impl, "step_s": step_s[impl], "tokens_per_s": tok_s,
                "speed_vs_first": step_s[impls[0]] / step_s[impl],
                "peak_mib": peak / MiB, "saved_mib": saved[impl] / MiB,
            })
    return {"preset": preset, "patch_size": patch_size, "micro_batch_size": micro_batch_size,
            "dtype": str(dtype).replace("torch.", ""), "device": str(dev),
            "threads": torch.get_num_threads(), "iters": iters, "rows": rows}


def format_table(res) -> str:
    lines = [
        f"preset {res['preset']} | K={res['patch_size']} | mbs {res['micro_batch_size']} | "
        f"{res['dtype']} on {res['device']} ({res['threads']} threads) | median of {res['iters']}",
        f"{'T':>5} | {'spec':>5} | {'fwd+bwd s':>9} | {'tokens/s':>9} | {'speed':>6} | "
        f"{'peak MiB':>8} | {'saved MiB':>9}",
    ]
    for r in res["rows"]:
        lines.append(
            f"{r['positions']:>5} | {r['impl']:>5} | {r['step_s']:>9.3f} | {r['tokens_per_s']:>9.0f} | "
            f"{r['speed_vs_first']:>5.2f}x | {r['peak_mib']:>8.0f} | {r['saved_mib']:>9.0f}"
        )
    return "\n".join(lines)
