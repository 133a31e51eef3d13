"""Run the project's benchmarks and gather their numbers into one table, each with its command.

- model speed: tools/bench_model.py (forward+backward tokens/s at K=1 and K, the ratio)
- layer specs: tools/bench_model.py --compare-specs 512 2048 (sdpa vs local spec)
- data pipeline: tools/bench_data.py (preprocessing rate, flat memory, sample-index build)

Each runs in this process through its package function (megatron_patch/bench/) and returns
structured results, which are summarised here. A benchmark that fails is reported and the
others still run; the exit status is then 1.

    python tools/bench_all.py                          # everything, the documented sizes
    python tools/bench_all.py --only model specs --out docs/bench.json
    python tools/bench_all.py --quick                  # tiny sizes: checks the plumbing in ~1 min
    python tools/bench_all.py --model-args "--preset 370m --positions 2048"   # on a GPU

Sizes are the tools' own defaults unless --quick or --{model,specs,data}-args replace them
(the flags of the tool named in each command).
"""
import argparse
import shlex
import sys
import tempfile
import time

from megatron_patch.bench.all import BENCHES, TITLES, host_info, run_bench, summary_table
from megatron_patch.cli import bench_data, bench_model

QUICK_ARGS = {
    "model": "--preset tiny --positions 32 --micro-batch-size 2 --iters 2 --warmup 1",
    "specs": "--preset tiny --micro-batch-size 1 --iters 1 --warmup 0",
    "data": ("--corpus-mb 1 --memory-corpus-mb 0 --workers 1 --repeats 1 --vocab-size 1000 "
             "--index-documents 20000 --index-tokens 2e6"),
}
QUICK_SPEC_POSITIONS = ["64"]
TOOLS = {"model": (bench_model, "tools/bench_model.py"), "specs": (bench_model, "tools/bench_model.py"),
         "data": (bench_data, "tools/bench_data.py")}


def commands(args) -> dict:
    """name -> the tool's argv (its flags) of each selected benchmark."""
    def extra(name):
        given = getattr(args, f"{name}_args")
        if given is not None:
            return shlex.split(given)
        return shlex.split(QUICK_ARGS[name]) if args.quick else []

    argv = {
        "model": extra("model"),
        "specs": [*extra("specs"), "--compare-specs", *(QUICK_SPEC_POSITIONS if args.quick else ["512", "2048"])],
        "data": ["--work-dir", args.data_work_dir or "WORK_DIR", *extra("data")],
    }
    return {name: argv[name] for name in args.only}


def display(name: str, argv) -> str:
    """The command as a user would type it from the repository root."""
    return " ".join(shlex.quote(p) for p in ["python", TOOLS[name][1], *argv])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES))
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a plumbing check, not numbers)")
    ap.add_argument("--out", help="write the gathered results as JSON here (e.g. docs/bench.json)")
    ap.add_argument("--data-work-dir", help="bench_data.py --work-dir (default: a temporary directory)")
    for name in BENCHES:
        ap.add_argument(f"--{name}-args", help=f"replace the size flags of the {name} benchmark (one string)")
    ap.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per benchmark")
    return ap


def get_args(argv=None):
    return build_parser().parse_args(argv)


def bench_fn(name: str, argv):
    """The benchmark as a call: the tool's parser reads `argv`, its package function runs."""
    module = TOOLS[name][0]
    args = module.build_parser().parse_args(argv)
    return lambda: module.run(args)


def main(argv=None) -> int:
    args = get_args(argv)
    tmp = None
    if "data" in args.only and not args.data_work_dir:
        tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
        args.data_work_dir = tmp.name
    try:
        entries = []
        for name, tool_argv in commands(args).items():
            command = display(name, tool_argv)
            print(f"running {TITLES[name]}: {command}", file=sys.stderr, flush=True)
            try:
                fn = bench_fn(name, tool_argv)
            except SystemExit:  # the tool's parser rejected --{name}-args (and printed why)
                fn = _rejected(name)
            entries.append(run_bench(name, command, fn, args.timeout))
            e = entries[-1]
            print(f"  {'FAILED: ' + e['error'] if e['error'] else 'done'} ({e['seconds']} s)",
                  file=sys.stderr, flush=True)
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(summary_table(entries))
    if args.out:
        from megatron_patch.io import write_json

        write_json(args.out, {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "quick": args.quick,
                              "host": host_info(), "benchmarks": entries})
    return 1 if any(e["error"] for e in entries) else 0


def _rejected(name):
    def fail():
        raise ValueError(f"--{name}-args: the tool rejects these flags (see above)")
    return fail


if __name__ == "__main__":
    sys.exit(main())
