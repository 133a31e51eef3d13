"""The demo's report: a table of compute, wall time and validation perplexity of training runs,
a JSON summary, and a plot of validation loss against compute (examples/demo.sh's last step).

    rows = [summarize_run("token-only", "runs/demo/token_only"), summarize_run("patch-K4", ...)]
    print(format_table(rows)); write_report(rows, "runs/demo")   # python -m megatron_patch.cli.demo_report

Each run directory holds the trainer's records (training/metrics.py, training/rundir.py):
- metrics.jsonl: {"kind": "eval", "stage", "patch_size", "step", "val_loss", "val_ppl",
  "tokens", "flops", "wall_s"} and {"kind": "train", ..., "tokens", "flops", "wall_s"} lines;
- compute.json: {"stages": [...], "total_flops", "token_only_flops", "ratio", "ideal_ratio",
  "final_val_loss", "final_val_ppl"}.
A held-out evaluation (tools/evaluate.py's JSON: "val_loss"/"loss" and "val_ppl"/"ppl") is shown
beside the run's own final validation loss, and the plot marks it with a star at the run's total
compute. The first run is the reference: "compute" is each run's FLOPs relative to it.

The transfer of a patch run (`transfer(rows, alone, patch)`): the loss of its transfer control
(its token stage alone, from a fresh init: tools/pretrain.py with the patch run's flags plus
`--stage token --handover-reinit all`) minus its own, on the held-out evaluation when both have
one, else on the runs' own validation. Positive: the patch stage helped the token stage.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from megatron_patch.io import save_figure, write_json
from megatron_patch.training import rundir
from megatron_patch.training.metrics import MetricsError, read_metrics

SUMMARY = "summary.json"
PLOT = "val_loss_vs_compute.png"


class ReportError(ValueError):
    """A run directory does not hold what the report needs; the message names the file."""


def _cumulative(records: List[dict], key: str) -> List[float]:
    """`key` of each record as a run-wide running total.

    The contract's counters are cumulative over the run. Should a stage restart its counter
    (a value drops when the stage changes), the previous stages' totals are added so the
    x-axis of a two-stage run stays monotone.
    """
    out, offset, last, last_stage = [], 0.0, 0.0, None
    for r in records:
        v = float(r.get(key) or 0.0)
        stage = r.get("stage")
        if last_stage is not None and stage != last_stage and v + offset < last:
            offset = last
        last_stage = stage
        out.append(v + offset)
        last = max(last, v + offset)
    return out


def eval_curve(records: List[dict]) -> List[dict]:
    """Eval records in file order with run-wide cumulative flops / tokens / wall_s."""
    flops, tokens, wall = (_cumulative(records, k) for k in ("flops", "tokens", "wall_s"))
    curve = []
    for r, f, t, w in zip(records, flops, tokens, wall):
        if r.get("kind") == "eval" and r.get("val_loss") is not None:
            curve.append({"stage": r.get("stage"), "patch_size": r.get("patch_size"), "step": r.get("step"),
                          "val_loss": float(r["val_loss"]), "flops": f, "tokens": t, "wall_s": w})
    return curve


def summarize_run(name: str, run_dir, held_out: Optional[dict] = None) -> dict:
    """One row of the table (plus the eval curve) from a run directory."""
    run_dir = Path(run_dir)
    metrics = Path(rundir.metrics_path(str(run_dir)))
    if not metrics.is_file():
        raise ReportError(f"{metrics} not found: is this a run directory written by tools/pretrain.py?")
    try:
        records = read_metrics(str(metrics))
    except MetricsError as err:
        raise ReportError(str(err)) from None
    compute_path = Path(rundir.compute_path(str(run_dir)))
    compute = json.loads(compute_path.read_text()) if compute_path.is_file() else {}
    if not records:
        raise ReportError(f"{metrics} is empty: the run logged nothing")
    curve = eval_curve(records)
    flops_all = _cumulative(records, "flops")
    wall_all = _cumulative(records, "wall_s")
    tokens_all = _cumulative(records, "tokens")
    stages, switches = [], []
    for i, r in enumerate(records):
        if r.get("stage") is not None and (not stages or stages[-1]["stage"] != r["stage"]):
            if stages:  # the switch happens where the previous stage's last record left off
                switches.append({"from": stages[-1]["stage"], "to": r["stage"], "flops": flops_all[i - 1]})
            stages.append({"stage": r["stage"], "patch_size": r.get("patch_size")})
    val_loss = compute.get("final_val_loss", curve[-1]["val_loss"] if curve else None)
    val_ppl = compute.get("final_val_ppl")
    run_val_loss = val_loss
    source = "run"
    if held_out is not None:
        val_loss = held_out.get("val_loss", held_out.get("loss"))
        val_ppl = held_out.get("val_ppl", held_out.get("ppl"))
        source = "held-out"
        if val_loss is None:
            raise ReportError(f"held-out evaluation of {name} has no val_loss/loss: {sorted(held_out)}")
    if val_ppl is None and val_loss is not None:
        val_ppl = math.exp(val_loss)
    return {
        "name": name,
        "run_dir": str(run_dir),
        "stages": stages,
        "stage_switches": switches,
        "patch_size": max((s["patch_size"] or 1 for s in stages), default=1),
        "total_flops": float(compute.get("total_flops", max(flops_all))),
        "token_only_flops": compute.get("token_only_flops"),
        "ratio": compute.get("ratio"),
        "ideal_ratio": compute.get("ideal_ratio"),
        "tokens": max(tokens_all),
        "wall_s": max(wall_all),
        "run_val_loss": run_val_loss,
        "val_loss": val_loss,
        "val_ppl": val_ppl,
        "val_source": source,
        "curve": curve,
    }


def _fmt_flops(x: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9)):
        if x >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.3g}"


def format_table(rows: List[dict]) -> str:
    """Fixed-width text table; compute is relative to the first row."""
    ref = rows[0]["total_flops"] or 1.0
    held = any(r["val_source"] == "held-out" for r in rows)
    header = ["run", "K", "tokens", "FLOPs", "compute", "train time", "val loss (run)"]
    header += ["held-out loss", "held-out ppl"] if held else ["val ppl"]
    body = []
    for r in rows:
        body.append([
            r["name"],
            str(r["patch_size"]),
            f"{r['tokens'] / 1e6:.2f}M",
            _fmt_flops(r["total_flops"]),
            f"{r['total_flops'] / ref:.2f}x",
            f"{r['wall_s']:.0f} s",
            "-" if r["run_val_loss"] is None else f"{r['run_val_loss']:.3f}",
        ] + ([] if not held else ["-" if r["val_source"] != "held-out" else f"{r['val_loss']:.3f}"]) + [
            "-" if r["val_ppl"] is None else f"{r['val_ppl']:.1f}",
        ])
    widths = [max(len(row[i]) for row in [header] + body) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header] + body]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def plot(rows: List[dict], path: str) -> None:
    """Validation loss against cumulative training FLOPs, one line per run; stage switches marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in rows:
        pts = r["curve"]
        if not pts:
            continue
        (line,) = ax.plot([p["flops"] for p in pts], [p["val_loss"] for p in pts], marker="o", ms=3,
                          label=f"{r['name']} ({_fmt_flops(r['total_flops'])}FLOPs)")
        if r["val_source"] == "held-out" and r["val_loss"] is not None:
            ax.plot([r["total_flops"]], [r["val_loss"]], marker="*", ms=11, ls="none", color=line.get_color(),
                    label=f"{r['name']} held-out")
        for sw in r["stage_switches"]:
            ax.axvline(sw["flops"], color=line.get_color(), ls=":", lw=1)
            ax.annotate(f"{sw['from']} -> {sw['to']}", (sw["flops"], 1.0), xycoords=("data", "axes fraction"),
                        textcoords="offset points", xytext=(3, -12), fontsize=7, color=line.get_color())
    ax.set_xlabel("training compute (model FLOPs)")
    ax.set_ylabel("validation loss (token level, nats)")
    ax.set_xlim(left=0)
    ax.set_title("Validation loss vs compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        save_figure(fig, str(path))
    finally:
        plt.close(fig)


def transfer(rows: List[dict], alone: str, patch: str) -> dict:
    """{"alone", "patch", "source", "alone_loss", "patch_loss", "transfer_nats"}: loss(alone) -
    loss(patch), on the held-out evaluation when both runs have one, else the runs' own."""
    by = {r["name"]: r for r in rows}
    missing = [n for n in (alone, patch) if n not in by]
    if missing:
        raise ReportError(f"--transfer names unknown run(s) {missing}; runs are {list(by)}")
    a, p = by[alone], by[patch]
    held = a["val_source"] == p["val_source"] == "held-out"
    key = "val_loss" if held else "run_val_loss"
    if a[key] is None or p[key] is None:
        raise ReportError(f"--transfer {alone}={patch}: a run has no validation loss")
    return {"alone": alone, "patch": patch, "source": "held-out" if held else "run",
            "alone_loss": a[key], "patch_loss": p[key], "transfer_nats": a[key] - p[key]}


def format_transfer(t: dict) -> str:
    return (f"transfer of {t['patch']}: {t['alone']} {t['alone_loss']:.3f} - {t['patch']} "
            f"{t['patch_loss']:.3f} = {t['transfer_nats']:+.3f} nats ({t['source']} loss; > 0: the "
            "patch stage helped the token stage, < 0: the token stage alone from a fresh init did better)")


def summary(rows: List[dict], transfers: Sequence[dict] = ()) -> dict:
    """What summary.json holds: every row with its compute relative to the first, the table,
    and the transfers."""
    ref = rows[0]["total_flops"] or 1.0
    return {
        "reference": rows[0]["name"],
        "runs": [{**{k: v for k, v in r.items() if k != "curve"}, "relative_compute": r["total_flops"] / ref,
                  "eval_curve": r["curve"]} for r in rows],
        "table": format_table(rows),
        "transfer": list(transfers),
    }


def write_summary(rows: List[dict], out_dir: str, transfers: Sequence[dict] = ()) -> str:
    path = str(Path(out_dir) / SUMMARY)
    write_json(path, summary(rows, transfers))
    return path


def pairs(items: List[str], flag: str) -> Dict[str, str]:
    """NAME=VALUE items as a dict (each name once)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ReportError(f"{flag} {item!r}: expected NAME=PATH")
        if name in out:
            raise ReportError(f"{flag} names {name!r} twice")
        out[name] = value
    return out
