"""A grid of two-stage (patch, then token) runs on one corpus, and its results table and plots.

Each run is one launch of tools/pretrain.py under torchrun with the same corpus, tokenizer,
model and flags; only K, lambda, the patch-stage batch policy and (for the token-only controls)
the budget change. Every run is evaluated at token level on the same held-out split, and
compute is counted in model FLOPs, so runs compare at equal compute.

    python tools/study.py --out runs/study \\
        --data-path data/corpus_text_document --tokenizer-model data/tok.model \\
        --model cpu-small --train-tokens 4M --patch-sizes 2 4 8 --patch-fractions 1/4 1/2 2/3 \\
        --batch-policies same_tokens same_sequences --controls 1.0 0.5 --nproc-per-node 2 \\
        -- --seq-length 256 --global-batch-size 16 --lr-warmup-iters 20 --eval-interval 50

Flags after `--` go to every tools/pretrain.py launch unchanged (e.g. --config FILE). The grid:
token-only controls at each --controls fraction of the budget (1.0 = same data, 0.5 = the
compute of K=4, lambda=2/3), then every K x lambda x policy at the full budget (`--design
cross`), or one axis at a time around the first K, lambda and policy (`--design star`).

Before the first launch the trainer's own setup checks (flags, files, tokenizer, stage plan)
run for every run of the grid, so a bad combination fails at once, not hours in.

Resumable: a run is finished when OUT/runs/NAME/compute.json exists and is then skipped; an
unfinished run that left a checkpoint is relaunched with --load. Rerun the same command after a
crash. `--no-launch` only rebuilds the table and plots from what is there; `--dry-run` prints
the launch commands; `--launcher python` runs each run as one plain process (no torchrun).

Writes OUT/results.csv, OUT/results.md, OUT/val_loss_vs_flops.png, OUT/val_loss_vs_K_lambda.png,
OUT/grid.json; each launch's output goes to OUT/logs/NAME.log.
"""
import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_PRETRAIN = str(ROOT / "tools" / "pretrain.py")

from megatron_patch.analysis import plots, results  # noqa: E402
from megatron_patch.analysis.io import write_json, write_text  # noqa: E402
from megatron_patch.analysis.study import (  # noqa: E402
    DESIGNS,
    POLICIES,
    Outcome,
    build_grid,
    check_passthrough,
    is_finished,
    launch_command,
    parse_fraction,
    parse_tokens,
    precheck,
    run_one,
    tail,
)


def _arg_type(fn):
    def parse(text):
        try:
            return fn(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = fn.__name__
    return parse


def get_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Flags after `--` are passed to every tools/pretrain.py launch.")
    ap.add_argument("--out", required=True, help="study directory (results, plots, logs, runs/)")
    ap.add_argument("--runs-dir", help="where the run directories go (default OUT/runs)")
    ap.add_argument("--data-path", nargs="+", help="Megatron prefix(es) without .bin/.idx")
    ap.add_argument("--tokenizer-model", help="SentencePiece .model used for the corpus")
    ap.add_argument("--model", default=None, help="model preset (megatron_patch.config.PRESETS); "
                    "default: the trainer's (or the --config file's)")
    ap.add_argument("--train-tokens", type=_arg_type(parse_tokens), required=True,
                    help="token budget B of every patch run (4e6, 4000000 or 4M)")
    ap.add_argument("--patch-sizes", type=int, nargs="+", default=[4], metavar="K")
    ap.add_argument("--patch-fractions", type=_arg_type(parse_fraction), nargs="+",
                    default=[parse_fraction("2/3")], metavar="LAMBDA", help="e.g. 1/4 1/2 2/3")
    ap.add_argument("--batch-policies", nargs="+", default=["same_tokens"], choices=POLICIES,
                    help="patch-stage batch: same tokens per step, or same sequences per step")
    ap.add_argument("--design", choices=DESIGNS, default="cross",
                    help="cross: every K x lambda x policy; star: the first K, lambda and policy "
                    "are the centre; vary one axis at a time around it")
    ap.add_argument("--controls", type=_arg_type(parse_fraction), nargs="*", default=[1.0, 0.5],
                    metavar="F", help="token-only runs at these fractions of the budget")
    ap.add_argument("--nproc-per-node", type=int, default=1)
    ap.add_argument("--launcher", choices=["torchrun", "python"], default="torchrun",
                    help="python: one plain process per run (no torchrun start-up; needs --nproc-per-node 1)")
    ap.add_argument("--pretrain", default=DEFAULT_PRETRAIN,
                    help=argparse.SUPPRESS)  # tests substitute a stub trainer
    ap.add_argument("--dry-run", action="store_true", help="print the launch commands only")
    ap.add_argument("--no-launch", action="store_true",
                    help="launch nothing: rebuild the table and plots from finished runs")
    ap.add_argument("--keep-going", action="store_true",
                    help="after a failed run, go on with the next (exit status 1 at the end)")
    args = ap.parse_args(argv)
    args.extra = extra
    return args


def common_flags(args) -> list:
    flags = []
    if args.data_path:
        flags += ["--data-path", *args.data_path]
    if args.tokenizer_model:
        flags += ["--tokenizer-model", args.tokenizer_model]
    if args.model:
        flags += ["--model", args.model]
    return flags + list(args.extra)


def check_inputs(args) -> None:
    """Fail before the first launch on what would fail every launch."""
    if args.no_launch:
        return
    if not os.path.isfile(args.pretrain):
        raise SystemExit(f"error: trainer {args.pretrain} not found")
    for prefix in args.data_path or []:
        try:
            float(prefix)
            continue  # a blend weight
        except ValueError:
            pass
        missing = [prefix + e for e in (".bin", ".idx") if not os.path.isfile(prefix + e)]
        if missing:
            raise SystemExit(f"error: --data-path {prefix}: {' and '.join(missing)} not found "
                             "(pass the prefix written by tools/preprocess_data.py)")
    if args.tokenizer_model and not os.path.isfile(args.tokenizer_model):
        raise SystemExit(f"error: --tokenizer-model {args.tokenizer_model} not found")
    if args.nproc_per_node < 1:
        raise SystemExit("error: --nproc-per-node must be >= 1")
    if args.launcher == "python" and args.nproc_per_node != 1:
        raise SystemExit("error: --launcher python runs one process; use torchrun for --nproc-per-node > 1")


def launch_all(args, specs, runs_dir, logs_dir) -> list:
    outcomes = []
    common = common_flags(args)
    if not args.dry_run:
        os.makedirs(runs_dir, exist_ok=True)
    for i, spec in enumerate(specs, 1):
        run_dir = os.path.join(runs_dir, spec.name)
        if is_finished(run_dir):
            print(f"[{i}/{len(specs)}] {spec.name}: finished, skipped", flush=True)
            outcomes.append(Outcome(spec.name, "skipped"))
            continue
        cmd = launch_command(spec, run_dir, common, args.nproc_per_node, args.pretrain, args.launcher)
        if args.dry_run:
            print(" ".join(cmd))
            continue
        log = os.path.join(logs_dir, f"{spec.name}.log")
        resumed = " (resuming)" if "--load" in cmd else ""
        print(f"[{i}/{len(specs)}] {spec.name}{resumed}: log {log}", flush=True)
        rc, seconds = run_one(cmd, log)
        ok = rc == 0 and is_finished(run_dir)
        outcomes.append(Outcome(spec.name, "done" if ok else "failed", seconds, log, rc))
        if ok:
            print(f"    done in {seconds:.1f} s", flush=True)
            continue
        why = f"exit status {rc}" if rc else "exit status 0 but no compute.json"
        print(f"    FAILED ({why}) after {seconds:.1f} s; last lines of {log}:\n{tail(log)}",
              file=sys.stderr, flush=True)
        if not args.keep_going:
            break
    return outcomes


def write_outputs(args, specs, runs_dir) -> list:
    rows = results.collect(specs, runs_dir)
    os.makedirs(args.out, exist_ok=True)
    drawn = []
    if plots.plot_loss_vs_flops(rows, runs_dir, os.path.join(args.out, plots.FLOPS_PLOT)):
        drawn.append(plots.FLOPS_PLOT)
    if plots.plot_loss_vs_k_lambda(rows, os.path.join(args.out, plots.K_LAMBDA_PLOT)):
        drawn.append(plots.K_LAMBDA_PLOT)
    setup = {
        "corpus": " ".join(args.data_path or ["(from the trainer config)"]),
        "tokenizer": args.tokenizer_model or "(from the trainer config)",
        "model": args.model or "(trainer default / config)",
        "budget": f"{args.train_tokens:,} tokens per patch run",
        "processes": str(args.nproc_per_node),
        "trainer flags": " ".join(args.extra) or "(none)",
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_text(os.path.join(args.out, "results.csv"), results.to_csv(rows))
    write_text(os.path.join(args.out, "results.md"), results.to_markdown(rows, setup, drawn))
    return rows


def main(argv=None) -> int:
    args = get_args(argv)
    try:
        check_passthrough(args.extra)
        specs = build_grid(args.train_tokens, args.patch_sizes, args.patch_fractions,
                           args.batch_policies, args.controls, args.design)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    check_inputs(args)
    runs_dir = args.runs_dir or os.path.join(args.out, "runs")
    logs_dir = os.path.join(args.out, "logs")
    if not args.no_launch and os.path.abspath(args.pretrain) == os.path.abspath(DEFAULT_PRETRAIN):
        try:
            precheck(specs, runs_dir, common_flags(args), args.nproc_per_node)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
    if not args.dry_run:
        write_json(os.path.join(args.out, "grid.json"), {
            "runs_dir": os.path.abspath(runs_dir), "common_flags": common_flags(args),
            "nproc_per_node": args.nproc_per_node, "runs": [s.to_dict() for s in specs]})
    outcomes = [] if args.no_launch else launch_all(args, specs, runs_dir, logs_dir)
    if args.dry_run:
        return 0
    try:
        rows = write_outputs(args, specs, runs_dir)
    except results.RunRecordError as err:
        raise SystemExit(f"error: {err}") from None
    done = sum(r["status"] == "finished" for r in rows)
    print(f"{done}/{len(rows)} runs finished; table {os.path.join(args.out, 'results.md')}")
    failed = [o.name for o in outcomes if o.status == "failed"]
    if failed:
        print(f"failed: {', '.join(failed)} (see {logs_dir}); rerun the same command to resume",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
