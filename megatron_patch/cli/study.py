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
compute of K=4, lambda=2/3), then every K x lambda x policy x knob setting at the full budget
(`--design cross`), or one axis at a time around the first value of every axis (`--design
star`). The recipe knobs are axes too; `none` leaves a flag out (the trainer's value), and
the first value of each is the centre's:

    python tools/study.py ... --design star --patch-lr none 3e-3 --handover-optimizer reset carry \
        --token-lr-warmup-iters none 50 --patch-schedule none 4:0.5,2:0.1667 \
        --patch-target-decay 1 0.5 --patch-mean-dtype fp32 param \
        --seeds 1234 5678 --seed-runs K4-lam0.6667-same_tokens K4-lam0.6667-same_tokens-handover_carry

Each run's name says what it changes from the centre (e.g. K4-lam0.6667-same_tokens-plr0.003);
--seeds repeats the centre (or the --seed-runs) with each further seed to show the
run-to-run spread. The knob values are columns of the table.

The hand-over variants and the init are axes too: --handover-reinit GROUPS (comma-separated:
embedding, output_layer, final_norm, out_proj, layers, all), --handover-shrink-perturb
ALPHA:SIGMA (shrink and perturb as one setting: theta <- ALPHA * theta + SIGMA * theta_fresh;
--handover-shrink and --handover-perturb alone vary one of the two), --lr-schedule-scope
stage|run and --output-proj-init scaled|plain:

    python tools/study.py ... --design star --handover-reinit none out_proj embedding,output_layer \
        --handover-shrink-perturb none 0.5:0.5 --lr-schedule-scope stage run \
        --output-proj-init scaled plain --transfer-controls

--transfer-controls adds, after each patch run (or only the NAMEs given), its transfer control
NAME-alone: the same flags plus `--stage token --handover-reinit all` in its own run directory,
i.e. the patch run's token stage (same data slice, steps, batch, schedule, warmup) from a fresh
init. Patch runs that differ only in the hand-over share one control. The table gains
`transfer_nats` = loss(alone) - loss(patch+token): positive when the patch stage helped.

The regime map reads several finished studies (one model size x budget each, run with
--transfer-controls) and writes OUT/regime.csv, OUT/regime.md and OUT/regime.png (transfer and
the gap to the equal-compute control against tokens per parameter, one line per model size);
--fit adds a line per size fitted in log tokens per parameter, with its zero crossing, where a
size has 3 or more points:

    python tools/study.py --regime-map runs/regime runs/regime/tiny-* runs/regime/cpu-small-* --fit
    python tools/study.py --regime-map runs/regime tiny=runs/a cpu-small=runs/b --params total

Before the first launch the trainer's own setup checks (flags, files, tokenizer, stage plan)
run for every run of the grid, so a bad combination fails at once, not hours in.

Resumable: a run is finished when OUT/runs/NAME/compute.json exists and is then skipped; an
unfinished run that left a checkpoint is relaunched with --load. Rerun the same command after a
crash. `--no-launch` only rebuilds the table and plots from what is there; `--dry-run` prints
the launch commands; `--launcher python` runs each run as one plain process (no torchrun).

matplotlib draws the plots; without it the study stops before the first launch.

Writes OUT/results.csv, OUT/results.md, OUT/val_loss_vs_flops.png, OUT/val_loss_vs_K_lambda.png,
OUT/val_loss_by_knob.png (when knobs or seeds vary), OUT/grid.json; each launch's output goes
to OUT/logs/NAME.log.
"""
import argparse
import os
import sys
import time

from megatron_patch.analysis import study
from megatron_patch.analysis.study import (
    DESIGNS, KNOBS, LAUNCHERS, PAIRED_AXES, POLICIES, parse_fraction, parse_shrink_perturb, parse_tokens,
)
from megatron_patch.training.config import HANDOVER_GROUPS, HANDOVER_OPTIMIZER, PATCH_MEAN_DTYPES
from megatron_patch.training import rundir


def _arg_type(fn):
    def parse(text):
        try:
            return fn(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = fn.__name__
    return parse


def _optional(fn):
    """`none` -> None (leave the flag out), else fn(text)."""
    def parse(text):
        return None if text.strip().lower() == "none" else fn(text)

    parse.__name__ = fn.__name__
    return parse


def _choice(choices):
    def choice(text):
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return choice


def _schedule(text):
    study.schedule_phases(text)  # the trainer's parser: a clear error now, not at launch
    return text


def _reinit(text):
    """--handover-reinit's GROUPS, checked against the trainer's groups."""
    groups = [g.strip() for g in text.split(",") if g.strip()]
    bad = [g for g in groups if g not in HANDOVER_GROUPS]
    if not groups or bad:
        raise ValueError(f"{text!r}: give comma-separated groups among {', '.join(HANDOVER_GROUPS)}")
    return ",".join(groups)


def knob_axes(args) -> dict:
    """{axis: [values]} of the knob axes (KNOBS fields and PAIRED_AXES) given on the command line."""
    fields = [k.field for k in KNOBS] + list(PAIRED_AXES)
    return {f: getattr(args, f) for f in fields if getattr(args, f, None)}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Flags after `--` are passed to every tools/pretrain.py launch.\n\n"
                                 "The regime map over finished studies: tools/study.py --regime-map OUT "
                                 "[SIZE=]DIR [...] [--fit] [--params total] (tools/study.py --regime-map "
                                 "OUT --help).")
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
    knobs = ap.add_argument_group(
        "recipe knobs", "axes of the grid: tools/pretrain.py's flag of the same name; the first value is "
        "the centre's, `none` leaves the flag out (the trainer's value)")
    knobs.add_argument("--patch-lr", type=_arg_type(_optional(float)), nargs="+", metavar="LR",
                       help="patch-stage peak learning rates")
    knobs.add_argument("--patch-min-lr", type=_arg_type(_optional(float)), nargs="+", metavar="LR",
                       help="patch-stage final learning rates")
    knobs.add_argument("--token-lr-warmup-iters", type=_arg_type(_optional(int)), nargs="+", metavar="N",
                       help="token-stage warmup steps")
    knobs.add_argument("--handover-optimizer", type=_arg_type(_optional(_choice(HANDOVER_OPTIMIZER))),
                       nargs="+", metavar="MODE", help=f"optimizer at the hand-over: {', '.join(HANDOVER_OPTIMIZER)}")
    knobs.add_argument("--patch-schedule", type=_arg_type(_optional(_schedule)), nargs="+", metavar="SCHED",
                       help="K schedules, e.g. 4:0.5,2:0.1667 (K:fraction pairs; sets the run's K and lambda)")
    knobs.add_argument("--patch-target-decay", type=_arg_type(_optional(float)), nargs="+", metavar="R",
                       help="weights R**k of a patch's K targets (1: uniform)")
    knobs.add_argument("--patch-mean-dtype", type=_arg_type(_optional(_choice(PATCH_MEAN_DTYPES))),
                       nargs="+", metavar="DTYPE", help=f"patch-mean accumulation: {', '.join(PATCH_MEAN_DTYPES)}")
    knobs.add_argument("--handover-reinit", type=_arg_type(_optional(_reinit)), nargs="+", metavar="GROUPS",
                       help="parameter groups re-initialised at the hand-over, comma-separated among "
                       f"{', '.join(HANDOVER_GROUPS)}")
    knobs.add_argument("--handover-shrink-perturb", type=_arg_type(parse_shrink_perturb), nargs="+",
                       metavar="ALPHA:SIGMA", help="shrink and perturb at the hand-over as one setting: "
                       "theta <- ALPHA * theta + SIGMA * theta_fresh (e.g. none 0.5:0.5 0.8:0.2)")
    knobs.add_argument("--handover-shrink", type=_arg_type(_optional(float)), nargs="+", metavar="ALPHA",
                       help="shrink alone (the perturb stays the centre's); see --handover-shrink-perturb")
    knobs.add_argument("--handover-perturb", type=_arg_type(_optional(float)), nargs="+", metavar="SIGMA",
                       help="perturb alone (the shrink stays the centre's); see --handover-shrink-perturb")
    knobs.add_argument("--lr-schedule-scope", type=_arg_type(_optional(_choice(("stage", "run")))), nargs="+",
                       metavar="SCOPE", help="stage: one LR schedule per stage; run: one over the whole run")
    knobs.add_argument("--output-proj-init", type=_arg_type(_optional(_choice(("scaled", "plain")))), nargs="+",
                       metavar="INIT", help="output-projection init: scaled (std/sqrt(2L), megatron-core) or plain (std)")
    ap.add_argument("--transfer-controls", nargs="*", metavar="NAME",
                    help="add the transfer control NAME-alone (its token stage alone, from a fresh init) "
                    "after every patch run, or after the patch runs named")
    ap.add_argument("--seeds", type=int, nargs="+", default=[], metavar="SEED",
                    help="the first seeds every run; each further seed repeats the centre (or --seed-runs)")
    ap.add_argument("--seed-runs", nargs="+", metavar="NAME",
                    help="runs to repeat with the further --seeds (default: the centre)")
    ap.add_argument("--nproc-per-node", type=int, default=1)
    ap.add_argument("--launcher", choices=LAUNCHERS, default="torchrun",
                    help="python: one plain process per run (no torchrun start-up; needs --nproc-per-node 1)")
    ap.add_argument("--pretrain", default=study.DEFAULT_PRETRAIN,
                    help=argparse.SUPPRESS)  # tests substitute a stub trainer
    ap.add_argument("--dry-run", action="store_true", help="print the launch commands only")
    ap.add_argument("--no-launch", action="store_true",
                    help="launch nothing: rebuild the table and plots from finished runs")
    ap.add_argument("--keep-going", action="store_true",
                    help="after a failed run, go on with the next (exit status 1 at the end)")
    return ap


def build_regime_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="study.py --regime-map",
        description="The regime map from finished studies: transfer and the gap to the equal-compute "
        "control against tokens per parameter, one line per model size.")
    ap.add_argument("--regime-map", required=True, metavar="OUT",
                    help="writes OUT/regime.csv, OUT/regime.md, OUT/regime.png")
    ap.add_argument("studies", nargs="+", metavar="[SIZE=]DIR",
                    help="tools/study.py --out directories (one model size x budget each, with "
                    "--transfer-controls); SIZE names the line (default: the model preset)")
    ap.add_argument("--params", choices=("non_embedding", "total"), default="non_embedding",
                    help="parameters that tokens per parameter counts (default: non_embedding)")
    ap.add_argument("--fit", action="store_true",
                    help="fit each size's points linearly in log10(tokens/param) (3 or more points) "
                    "and print where the line crosses zero, with its standard error")
    return ap


def regime_main(argv) -> int:
    from megatron_patch.analysis import regime

    args = build_regime_parser().parse_args(argv)
    try:
        study.check_plotting()
        points = regime.regime_rows(args.studies, args.params)
        report = regime.write_regime(args.regime_map, points, args.fit)
    except ValueError as err:  # RegimeError, RunRecordError, MetricsError
        raise SystemExit(f"error: {err}") from None
    print(regime.to_markdown(points, report["fit_text"]).split("\n", 2)[2].rstrip())
    print(f"wrote {os.path.join(args.regime_map, regime.REGIME_MD)}, {regime.REGIME_CSV}"
          + (f", {report['plot']}" if report["plot"] else ""))
    return 0


def get_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = build_parser().parse_args(argv)
    args.extra = extra
    return args


def _log(line: str, error: bool = False) -> None:
    print(line, file=sys.stderr if error else sys.stdout, flush=True)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    head = argv[:argv.index("--")] if "--" in argv else argv
    if any(a == "--regime-map" or a.startswith("--regime-map=") for a in head):
        return regime_main(argv)
    args = get_args(argv)
    runs_dir = args.runs_dir or os.path.join(args.out, "runs")
    logs_dir = os.path.join(args.out, "logs")
    common = study.common_flags(args.data_path, args.tokenizer_model, args.model, args.extra)
    try:
        axes = knob_axes(args)
        study.check_passthrough(args.extra, [*axes, *(["seed"] if args.seeds else [])],
                                args.transfer_controls is not None)
        specs = study.build_grid(args.train_tokens, args.patch_sizes, args.patch_fractions,
                                 args.batch_policies, args.controls, args.design, axes,
                                 args.seeds, args.seed_runs, args.transfer_controls)
        if not args.dry_run:  # the report draws plots: no matplotlib, no study
            study.check_plotting()
        if not args.no_launch:
            study.check_inputs(args.pretrain, args.data_path, args.tokenizer_model,
                               args.nproc_per_node, args.launcher)
            if os.path.abspath(args.pretrain) == os.path.abspath(study.DEFAULT_PRETRAIN):
                study.precheck(specs, runs_dir, common, args.nproc_per_node)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if args.dry_run:
        for i, spec in enumerate([] if args.no_launch else specs, 1):
            run_dir = os.path.join(runs_dir, spec.name)
            if rundir.is_finished(run_dir):
                print(f"[{i}/{len(specs)}] {spec.name}: finished, skipped")
            else:
                print(" ".join(study.launch_command(spec, run_dir, common, args.nproc_per_node,
                                                    args.pretrain, args.launcher)))
        return 0
    study.write_grid(os.path.join(args.out, "grid.json"), specs, runs_dir, common, args.nproc_per_node)
    outcomes = [] if args.no_launch else study.launch_all(
        specs, runs_dir, logs_dir, common, args.nproc_per_node, args.pretrain, args.launcher,
        args.keep_going, log=_log)
    setup = {
        "corpus": " ".join(args.data_path or ["(from the trainer config)"]),
        "tokenizer": args.tokenizer_model or "(from the trainer config)",
        "model": args.model or "(trainer default / config)",
        "budget": f"{args.train_tokens:,} tokens per patch run",
        "processes": str(args.nproc_per_node),
        "trainer flags": " ".join(args.extra) or "(none)",
        "written": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        rows = study.write_report(specs, runs_dir, args.out, setup)
    except ValueError as err:  # RunRecordError, MetricsError: a run's records are unreadable
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
