"""Forward+backward throughput of PatchGPTModel at K=1 and K=K, side by side.

    python tools/bench_model.py --preset cpu-small --patch-size 4 --positions 256 --micro-batch-size 4
    python tools/bench_model.py --preset 370m --positions 2048 --micro-batch-size 4   # on a GPU (bf16)

Prints a table; `--json` prints one JSON object instead, `--json OUT` writes it to OUT.
How it measures: megatron_patch/bench/model.py.

    python tools/bench_model.py --compare-specs 512 2048   # layer specs instead: sdpa vs local (tools/bench_spec.py)
"""
import argparse
import sys

from megatron_patch.cli._output import add_json_flag, emit


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--preset", default="cpu-small")
    ap.add_argument("--patch-size", type=int, default=4, help="K compared against K=1")
    ap.add_argument("--positions", type=int, default=256, help="transformer positions per sample (T)")
    ap.add_argument("--micro-batch-size", type=int, default=4)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--transformer-impl", default="auto")
    add_json_flag(ap)
    ap.add_argument("--compare-specs", type=int, nargs="*", metavar="T",
                    help="instead: layer specs sdpa vs local at these T (default 512 2048), "
                         "tokens/s and peak memory at --patch-size, --micro-batch-size; see tools/bench_spec.py")
    return ap


def run(args) -> dict:
    """The benchmark the parsed flags describe, in a world of one; returns its result."""
    from megatron_patch import distributed
    from megatron_patch.config import ParallelConfig

    distributed.initialize(ParallelConfig(), seed=1234)
    try:
        if args.compare_specs is not None:
            from megatron_patch.bench.spec import compare_specs

            return compare_specs(("sdpa", "local"), args.preset, args.patch_size,
                                 args.compare_specs or [512, 2048], args.micro_batch_size,
                                 args.iters, args.warmup)
        from megatron_patch.bench.model import measure

        return measure(args.preset, [1, args.patch_size], args.positions, args.micro_batch_size,
                       args.iters, args.warmup, args.transformer_impl)
    finally:
        distributed.destroy()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    res = run(args)
    if args.compare_specs is not None:
        from megatron_patch.bench.spec import format_table
    else:
        from megatron_patch.bench.model import format_table
    emit(res, format_table(res), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
