"""Forward+backward throughput of PatchGPTModel at K=1 and K=K, side by side.

Both models run the same number of transformer positions per micro-batch (T), so the patch
model consumes K times the tokens for about the same work: the ideal ratio is K. Timings
alternate between the two models round by round, so machine noise hits both alike.

    distributed.initialize(ParallelConfig())                 # a world of one
    res = measure("cpu-small", [1, 4], positions=256, micro_batch_size=4)
    print(format_table(res))                                  # tools/bench_model.py
"""
import statistics
import time
from typing import Optional, Sequence

import torch

from megatron_patch import device, distributed
from megatron_patch.config import ParallelConfig, get_preset, validate_for
from megatron_patch.model import build_model


def fwd_bwd(model, tokens, labels):
    loss = model(tokens, None, None, labels=labels)
    loss.float().mean().backward()


def measure(preset: str, patch_sizes: Sequence[int], positions: int, micro_batch_size: int,
            iters: int = 10, warmup: int = 2, impl: str = "auto",
            dtype: Optional[torch.dtype] = None, dev: Optional[torch.device] = None) -> dict:
    """{"preset", "impl", "positions", "micro_batch_size", "dtype", "device", "iters", "params_m",
    "rows": [{"patch_size", "step_s", "tokens_per_s", "ratio"}]}; ratio is against the first K.

    Needs an initialized world of one. dtype/dev default to device.compute_dtype(None) and
    device.current() (bf16 on a GPU, fp32 on CPU)."""
    dev = dev or device.current()
    dtype = dtype or device.compute_dtype(None)
    cfg = get_preset(preset, transformer_impl=impl)
    par = ParallelConfig()
    models, batches = {}, {}
    for K in patch_sizes:
        validate_for(cfg, par, K, positions * K)
        distributed.set_seed(1234)
        models[K] = build_model(cfg, par, patch_size=K, params_dtype=dtype).to(dev)
        g = torch.Generator().manual_seed(K)
        seq = torch.randint(0, cfg.vocab_size, (micro_batch_size, (positions + 1) * K), generator=g)
        batches[K] = (seq[:, : positions * K].to(dev), seq[:, K:].to(dev))
    times = {K: [] for K in patch_sizes}
    for i in range(warmup + iters):
        for K in patch_sizes:  # alternate: both models see the same machine conditions
            models[K].zero_grad(set_to_none=True)
            device.synchronize()  # host-device sync: needed for honest GPU timings
            t0 = time.perf_counter()
            fwd_bwd(models[K], *batches[K])
            device.synchronize()
            if i >= warmup:
                times[K].append(time.perf_counter() - t0)
    rows = []
    base = None
    for K in patch_sizes:
        t = statistics.median(times[K])
        tok_s = micro_batch_size * positions * K / t
        base = base or tok_s
        rows.append({"patch_size": K, "step_s": t, "tokens_per_s": tok_s, "ratio": tok_s / base})
    return {
        "preset": preset, "impl": impl, "positions": positions, "micro_batch_size": micro_batch_size,
        "dtype": str(dtype).replace("torch.", ""), "device": str(dev), "iters": iters,
        "params_m": cfg.num_params() / 1e6, "rows": rows,
    }


def format_table(res: dict) -> str:
    K = res["rows"][-1]["patch_size"]
    lines = [
        f"preset {res['preset']} ({res['params_m']:.1f}M params) | impl {res['impl']} | "
        f"T={res['positions']} positions x mbs {res['micro_batch_size']} | {res['dtype']} on {res['device']}",
        f"{'K':>3} | {'fwd+bwd s':>9} | {'tokens/s':>10} | {'vs K=1':>6}",
    ]
    for r in res["rows"]:
        lines.append(f"{r['patch_size']:>3} | {r['step_s']:>9.4f} | {r['tokens_per_s']:>10.0f} | {r['ratio']:>5.2f}x")
    lines.append(f"speed ratio K={K} / K=1: {res['rows'][-1]['ratio']:.2f}x (ideal {K}x)")
    return "\n".join(lines)
