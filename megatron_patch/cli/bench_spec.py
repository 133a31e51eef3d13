"""Layer specs side by side: forward+backward tokens/s and peak memory of "sdpa" vs "local".

    python tools/bench_spec.py                                   # cpu-small, K=4, T=512 and 2048
    python tools/bench_spec.py --positions 512 2048 --iters 5 --json
    python tools/bench_model.py --compare-specs                  # the same, from the model benchmark
    python tools/bench_spec.py --preset 370m --positions 2048 8192 --micro-batch-size 1   # GPU, bf16

Prints a table; `--json` prints one JSON object instead, `--json OUT` writes it to OUT.
How it measures (and the CPU memory child): megatron_patch/bench/spec.py.
"""
import argparse
import sys
import json

from megatron_patch.cli._output import add_json_flag, emit


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--patch-size", type=int, default=4)
    ap.add_argument("--positions", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--micro-batch-size", type=int, default=1)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--impls", nargs="+", default=["sdpa", "local"], help="first one is the baseline")
    add_json_flag(ap)
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    return ap


def run(args) -> dict:
    """The comparison the parsed flags describe, in a world of one; returns its result."""
    import torch

    from megatron_patch import distributed
    from megatron_patch.bench import spec
    from megatron_patch.config import ParallelConfig

    distributed.initialize(ParallelConfig(), seed=1234)
    try:
        if args.memory_child:  # one (spec, T) on CPU, in a fresh process: see bench/spec.py
            peak = spec.peak_memory_here(args.impls[0], args.preset, args.patch_size, args.positions[0],
                                         args.micro_batch_size, torch.float32, torch.device("cpu"))
            return {"peak_bytes": peak}
        return spec.compare_specs(args.impls, args.preset, args.patch_size, args.positions,
                                  args.micro_batch_size, args.iters, args.warmup)
    finally:
        distributed.destroy()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    res = run(args)
    if args.memory_child:
        print(json.dumps(res))
        return 0
    from megatron_patch.bench.spec import format_table

    emit(res, format_table(res), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
