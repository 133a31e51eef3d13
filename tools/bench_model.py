"""Forward+backward throughput of PatchGPTModel at K=1 and K=K, side by side.

Both models run the same number of transformer positions per micro-batch (T), so the patch
model consumes K times the tokens for about the same work: the ideal ratio is K. Timings
alternate between the two models round by round, so machine noise hits both alike.

    python tools/bench_model.py --preset cpu-small --patch-size 4 --positions 256 --micro-batch-size 4
    python tools/bench_model.py --preset 370m --positions 2048 --micro-batch-size 4   # on a GPU (bf16)

Prints a table and, with --json, one JSON object.

    python tools/bench_model.py --compare-specs 512 2048   # layer specs instead: sdpa vs local (tools/bench_spec.py)
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from megatron_patch import distributed  # noqa: E402
from megatron_patch.config import ParallelConfig, get_preset, validate_for  # noqa: E402
from megatron_patch.model import build_model  # noqa: E402


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # host-device sync: needed for honest GPU timings


def fwd_bwd(model, tokens, labels):
    loss = model(tokens, None, None, labels=labels)
    loss.float().mean().backward()


def measure(preset, patch_sizes, positions, micro_batch_size, iters, warmup, impl, dtype, device):
    cfg = get_preset(preset, transformer_impl=impl)
    par = ParallelConfig()
    models, batches = {}, {}
    for K in patch_sizes:
        validate_for(cfg, par, K, positions * K)
        distributed.set_seed(1234)
        models[K] = build_model(cfg, par, patch_size=K, params_dtype=dtype).to(device)
        g = torch.Generator().manual_seed(K)
        seq = torch.randint(0, cfg.vocab_size, (micro_batch_size, (positions + 1) * K), generator=g)
        batches[K] = (seq[:, : positions * K].to(device), seq[:, K:].to(device))
    times = {K: [] for K in patch_sizes}
    for i in range(warmup + iters):
        for K in patch_sizes:  # alternate: both models see the same machine conditions
            models[K].zero_grad(set_to_none=True)
            _sync()
            t0 = time.perf_counter()
            fwd_bwd(models[K], *batches[K])
            _sync()
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
        "dtype": str(dtype).replace("torch.", ""), "device": str(device), "iters": iters,
        "params_m": cfg.num_params() / 1e6, "rows": rows,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--patch-size", type=int, default=4, help="K compared against K=1")
    ap.add_argument("--positions", type=int, default=256, help="transformer positions per sample (T)")
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--transformer-impl", default="auto")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--compare-specs", type=int, nargs="*", metavar="T",
                    help="instead: layer specs sdpa vs local at these T (default 512 2048), "
                         "tokens/s and peak memory at --patch-size, --micro-batch-size; see tools/bench_spec.py")
    args = ap.parse_args(argv)
    if args.compare_specs is not None:
        return _compare_specs(args)

    on_gpu = torch.cuda.is_available()
    device = torch.device("cuda") if on_gpu else torch.device("cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    distributed.initialize(ParallelConfig(), seed=1234)
    try:
        res = measure(args.preset, [1, args.patch_size], args.positions, args.micro_batch_size,
                      args.iters, args.warmup, args.transformer_impl, dtype, device)
    finally:
        distributed.destroy()
    if args.json:
        print(json.dumps(res))
        return res
    print(f"preset {res['preset']} ({res['params_m']:.1f}M params) | impl {res['impl']} | "
          f"T={res['positions']} positions x mbs {res['micro_batch_size']} | {res['dtype']} on {res['device']}")
    print(f"{'K':>3} | {'fwd+bwd s':>9} | {'tokens/s':>10} | {'vs K=1':>6}")
    for r in res["rows"]:
        print(f"{r['patch_size']:>3} | {r['step_s']:>9.4f} | {r['tokens_per_s']:>10.0f} | {r['ratio']:>5.2f}x")
    print(f"speed ratio K={args.patch_size} / K=1: {res['rows'][-1]['ratio']:.2f}x (ideal {args.patch_size}x)")
    return res


def _compare_specs(args):
    from tools.bench_spec import compare_specs, format_table

    distributed.initialize(ParallelConfig(), seed=1234)
    try:
        res = compare_specs(("sdpa", "local"), args.preset, args.patch_size, args.compare_specs or [512, 2048],
                            args.micro_batch_size, args.iters, args.warmup)
    finally:
        distributed.destroy()
    print(json.dumps(res) if args.json else format_table(res))
    return res


if __name__ == "__main__":
    main()
