"""Compare training runs: a table of compute, wall time and validation perplexity, and a plot
of validation loss against compute. The last step of examples/demo.sh.

    python -m megatron_patch.cli.demo_report --run token-only=runs/demo/token_only \\
        --run patch-K4=runs/demo/patch_k4 --out runs/demo
    # -> runs/demo/summary.json, runs/demo/val_loss_vs_compute.png, the table on stdout

`--eval NAME=FILE` adds a held-out evaluation of run NAME (tools/evaluate.py's JSON). The first
run is the reference: "compute" is each run's FLOPs relative to it. `--transfer ALONE=PATCH`
prints the transfer of patch run PATCH: the loss of run ALONE (its token stage alone from a fresh
init: the patch run's flags plus `--stage token --handover-reinit all`) minus its own, in nats
(> 0: the patch stage helped), and adds it to summary.json. What is read and how:
megatron_patch/analysis/demo.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megatron_patch.analysis import demo


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="NAME=DIR",
                   help="a run directory (repeat; the first is the reference for relative compute)")
    p.add_argument("--eval", action="append", default=[], metavar="NAME=FILE",
                   help="held-out evaluation JSON of run NAME (tools/evaluate.py output)")
    p.add_argument("--transfer", action="append", default=[], metavar="ALONE=PATCH",
                   help="transfer of run PATCH: loss(ALONE) - loss(PATCH), ALONE being its token stage "
                   "alone from a fresh init (repeat for several)")
    p.add_argument("--out", required=True, help="writes summary.json and val_loss_vs_compute.png here")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        runs = demo.pairs(args.run, "--run")
        evals = demo.pairs(args.eval, "--eval")
        unknown = set(evals) - set(runs)
        if unknown:
            raise demo.ReportError(f"--eval for unknown run(s) {sorted(unknown)}; runs are {list(runs)}")
        held = {}
        for name, path in evals.items():
            if not Path(path).is_file():
                raise demo.ReportError(f"--eval {name}={path}: file not found")
            held[name] = json.loads(Path(path).read_text())
        rows = [demo.summarize_run(name, d, held.get(name)) for name, d in runs.items()]
        transfers = [demo.transfer(rows, alone, patch)
                     for alone, patch in demo.pairs(args.transfer, "--transfer").items()]
    except (demo.ReportError, json.JSONDecodeError) as e:
        print(f"demo_report.py: error: {e}", file=sys.stderr)
        return 1
    print(demo.format_table(rows))
    for t in transfers:
        print(demo.format_transfer(t))
    print(f"wrote {demo.write_summary(rows, args.out, transfers)}")
    if not args.no_plot:
        path = Path(args.out) / demo.PLOT
        try:
            demo.plot(rows, str(path))
        except ImportError:
            print("demo_report.py: error: the plot needs matplotlib (pip install matplotlib) or pass --no-plot",
                  file=sys.stderr)
            return 1
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
