"""Read the trainer's run records and turn a grid into one results table (CSV and Markdown).

Inputs per run (the trainer's metrics contract):
- SAVE/compute.json: {"stages": [{"stage", "patch_size", "steps", "tokens", "flops", "wall_s"}],
  "total_flops", "token_only_flops", "ratio", "ideal_ratio", "final_val_loss", "final_val_ppl"}
- SAVE/metrics.jsonl: one JSON object per line; "kind": "eval" lines carry the token-level
  "val_loss" with the run's cumulative "tokens" and "flops" at that point.

The recipe knobs of a run (K schedule, patch-stage learning rates, token-stage warmup,
optimizer hand-over, target decay, patch-mean dtype, the hand-over variants, LR schedule scope,
output-projection init, seed) are columns: the value the grid passed, else, for a finished patch
run, the value its compute.json `recipe` records.

The transfer of a patch run: `transfer_nats` = final val loss of its transfer control (the
token stage alone from a fresh init, kind "alone") - its own. Positive: the patch stage helped
the token stage. The gap to the equal-compute token-only control stays beside it
(`delta_vs_equal_compute`).

Compute is compared in FLOPs: `compute_x` is a run's total FLOPs over those of the token-only
run on the full budget (the 1.0x control when it finished, else the token-only FLOPs the
trainer computed for a full-budget run's tokens).
"""
import csv
import io
import json
import math
import os
from typing import Dict, List, Optional, Sequence

from megatron_patch.analysis.grid import KNOB_FIELDS, RunSpec, axis_fields, transfer_controls_of
from megatron_patch.training import rundir
from megatron_patch.training.metrics import read_metrics

COMPUTE_KEYS = ("stages", "total_flops", "token_only_flops", "final_val_loss")
KNOB_COLUMNS = KNOB_FIELDS + ("seed",)
# Knobs whose configured value compute.json records (`recipe`): a run that left the flag out
# shows the value it trained with.
RECORDED_KNOBS = ("patch_lr", "patch_min_lr", "token_lr_warmup_iters", "handover_optimizer",
                  "patch_target_decay", "patch_mean_dtype", "handover_reinit", "handover_shrink",
                  "handover_perturb", "lr_schedule_scope", "output_proj_init")

COLUMNS = [
    # (key, CSV/Markdown header, Markdown format)
    ("name", "run", "{}"),
    ("kind", "kind", "{}"),
    ("patch_size", "K", "{}"),
    ("patch_fraction", "lambda", "{:.3g}"),
    ("batch_policy", "policy", "{}"),
    # the recipe knobs (Markdown shows those the grid sets; see KNOB_COLUMNS)
    ("patch_schedule", "K schedule", "{}"),
    ("patch_lr", "patch lr", "{:g}"),
    ("patch_min_lr", "patch min lr", "{:g}"),
    ("token_lr_warmup_iters", "token warmup", "{}"),
    ("handover_optimizer", "hand-over optim", "{}"),
    ("patch_target_decay", "target decay", "{:g}"),
    ("patch_mean_dtype", "patch mean", "{}"),
    ("handover_reinit", "re-init", "{}"),
    ("handover_shrink", "shrink", "{:g}"),
    ("handover_perturb", "perturb", "{:g}"),
    ("lr_schedule_scope", "LR schedule", "{}"),
    ("output_proj_init", "out-proj init", "{}"),
    ("seed", "seed", "{}"),
    ("train_tokens", "budget tokens", "{:,}"),
    ("patch_steps", "patch steps", "{}"),
    ("token_steps", "token steps", "{}"),
    ("tokens", "tokens trained", "{:,}"),
    ("total_flops", "FLOPs", "{:.3e}"),
    ("compute_x", "compute x", "{:.3f}"),
    ("ideal_ratio", "ideal x", "{:.3f}"),
    ("final_val_loss", "val loss", "{:.4f}"),
    ("final_val_ppl", "val ppl", "{:.2f}"),
    ("delta_vs_full", "dloss vs token 1.0x", "{:+.4f}"),
    ("equal_compute_control", "equal-compute control", "{}"),
    ("delta_vs_equal_compute", "dloss vs it", "{:+.4f}"),
    ("ppl_vs_equal_compute", "ppl vs it", "{:+.1%}"),
    ("transfer_control", "token stage alone", "{}"),
    ("transfer_nats", "transfer nats", "{:+.4f}"),
    ("patch_stage_val_loss", "val loss after patch stage", "{:.4f}"),
    ("wall_s", "train wall s", "{:.1f}"),
]


class RunRecordError(ValueError):
    """A run directory whose records are missing or unreadable."""


def read_compute(run_dir: str) -> dict:
    path = rundir.compute_path(run_dir)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise RunRecordError(f"{path} not found: the run has not finished") from None
    except (OSError, json.JSONDecodeError) as err:
        raise RunRecordError(f"{path} is unreadable ({err}); delete it to rerun the run") from None
    missing = [k for k in COMPUTE_KEYS if k not in data]
    if missing:
        raise RunRecordError(f"{path} lacks {missing}; was it written by tools/pretrain.py?")
    return data


def eval_curve(run_dir: str) -> List[dict]:
    """[{"flops", "tokens", "val_loss", "stage"}] of the run's evaluations, in FLOPs order."""
    points = []
    for r in read_metrics(run_dir):
        if r.get("kind") == "eval" and r.get("val_loss") is not None and r.get("flops") is not None:
            points.append({"flops": float(r["flops"]), "tokens": r.get("tokens"),
                           "val_loss": float(r["val_loss"]), "stage": r.get("stage")})
    points.sort(key=lambda p: p["flops"])
    return points


def _stage_steps(compute: dict, kind: str) -> int:
    """Steps of the run's patch stages (all of a K schedule's) or of its token stage."""
    return sum(int(s.get("steps", 0)) for s in compute["stages"]
               if rundir.stage_kind(s.get("stage", "")) == kind)


def run_row(spec: RunSpec, run_dir: str) -> dict:
    """One table row from a finished run's compute.json (status "finished")."""
    c = read_compute(run_dir)
    loss = c.get("final_val_loss")
    ppl = c.get("final_val_ppl")
    if ppl is None and loss is not None:
        ppl = math.exp(min(loss, 50.0))
    knobs = {}
    if spec.kind == "patch":
        recipe = c.get("recipe") or {}
        knobs = {k: recipe[k] for k in RECORDED_KNOBS if getattr(spec, k) is None and k in recipe}
    return {
        **spec.to_dict(),
        **knobs,
        "status": "finished",
        "patch_steps": _stage_steps(c, "patch"),
        "token_steps": _stage_steps(c, "token"),
        "tokens": sum(int(s.get("tokens", 0)) for s in c["stages"]),
        "total_flops": float(c["total_flops"]),
        "token_only_flops": float(c["token_only_flops"]),
        "ratio": c.get("ratio"),
        "ideal_ratio": c.get("ideal_ratio"),
        "final_val_loss": loss,
        "final_val_ppl": ppl,
        "wall_s": sum(float(s.get("wall_s", 0.0)) for s in c["stages"]),
        "patch_stage_val_loss": _last_patch_stage_eval(run_dir),
    }


def _last_patch_stage_eval(run_dir: str) -> Optional[float]:
    """Token-level validation loss of the model at the end of its patch stage (None: no patch stage)."""
    points = [p for p in eval_curve(run_dir) if rundir.stage_kind(p["stage"] or "") == "patch"]
    return points[-1]["val_loss"] if points else None


def collect(specs: Sequence[RunSpec], runs_dir: str) -> List[dict]:
    """Rows for every spec: finished runs with their numbers, the others with their status."""
    rows = []
    controls = transfer_controls_of(specs)
    for spec in specs:
        run_dir = os.path.join(runs_dir, spec.name)
        if rundir.is_finished(run_dir):
            rows.append(run_row(spec, run_dir))
        else:
            status = "unfinished" if os.path.isdir(run_dir) else "not run"
            rows.append({**spec.to_dict(), "status": status})
        if spec.name in controls:
            rows[-1]["transfer_control"] = controls[spec.name]
    add_comparisons(rows)
    return rows


def _reference_flops(rows: List[dict]) -> Optional[float]:
    """FLOPs of token-only training on the full budget."""
    for r in rows:
        if r["status"] == "finished" and r["kind"] == "token" and r["budget_fraction"] == 1.0:
            return r["total_flops"]
    full = [r["token_only_flops"] for r in rows
            if r["status"] == "finished" and r["kind"] == "patch"]
    return max(full) if full else None


def add_comparisons(rows: List[dict]) -> None:
    """compute_x, and the loss differences to the full control and to the equal-compute one."""
    ref = _reference_flops(rows)
    done = [r for r in rows if r["status"] == "finished"]
    controls = [r for r in done if r["kind"] == "token"]
    full = next((r for r in controls if r["budget_fraction"] == 1.0), None)
    for r in done:
        r["compute_x"] = r["total_flops"] / ref if ref else None
        if r["kind"] == "token" and r.get("ideal_ratio") is None:
            r["ideal_ratio"] = 1.0
        if r["kind"] == "alone":  # the token stage only (compute.json has the whole recipe's ideal)
            r["ideal_ratio"] = 1.0 - min(float(r["patch_fraction"]), 1.0)
        loss = r["final_val_loss"]
        if full is not None and r is not full and loss is not None:
            r["delta_vs_full"] = loss - full["final_val_loss"]
        others = [c for c in controls if c is not r]
        if r["kind"] == "patch" and others and loss is not None:
            # The control whose FLOPs are closest (in ratio) is the equal-compute baseline.
            best = min(others, key=lambda c: abs(math.log(c["total_flops"] / r["total_flops"])))
            r["equal_compute_control"] = best["name"]
            r["delta_vs_equal_compute"] = loss - best["final_val_loss"]
            # The yardstick: validation perplexity relative to the control (-5% = 5% better).
            r["ppl_vs_equal_compute"] = math.exp(r["delta_vs_equal_compute"]) - 1.0
    add_transfer(rows)


def add_transfer(rows: List[dict]) -> None:
    """transfer_nats of each finished patch run whose transfer control finished: loss(alone) -
    loss(patch+token); positive: the patch stage helped."""
    alone = {r["name"]: r for r in rows if r["kind"] == "alone" and r["status"] == "finished"
             and r.get("final_val_loss") is not None}
    for r in rows:
        control = alone.get(r.get("transfer_control"))
        if r["kind"] == "patch" and r["status"] == "finished" and control is not None \
                and r.get("final_val_loss") is not None:
            r["transfer_nats"] = control["final_val_loss"] - r["final_val_loss"]


def _fmt(value, fmt: str) -> str:
    if value is None or value == "":
        return ""
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


# Columns added since results.csv was first read by other tools go last: the older ones keep their places.
NEW_CSV_FIELDS = ["handover_reinit", "handover_shrink", "handover_perturb", "lr_schedule_scope",
                  "output_proj_init", "transfer_control", "transfer_nats", "transfer_of"]
CSV_FIELDS = ([k for k, _, _ in COLUMNS if k not in NEW_CSV_FIELDS]
              + ["token_only_flops", "ratio", "budget_fraction", "varies", "status"] + NEW_CSV_FIELDS)
TRANSFER_COLUMNS = ("transfer_control", "transfer_nats")


def to_csv(rows: List[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    return buf.getvalue()


def markdown_columns(rows: List[dict]) -> list:
    """COLUMNS without the knob columns that no run of the grid sets (the paper's recipe)."""
    grid_sets = {k for r in rows for k in KNOB_COLUMNS if k in axis_fields(r.get("varies")) or
                 (r.get("kind") == "patch" and r.get(k) is not None and k not in RECORDED_KNOBS)}
    done = [r for r in rows if r.get("kind") == "patch" and r["status"] == "finished"]
    varied = {k for k in KNOB_COLUMNS if len({str(r[k]) for r in done if r.get(k) is not None}) > 1}
    transfer = set(TRANSFER_COLUMNS) if any(r.get("transfer_control") for r in rows) else set()
    return [c for c in COLUMNS if (c[0] not in KNOB_COLUMNS or c[0] in grid_sets | varied)
            and (c[0] not in TRANSFER_COLUMNS or c[0] in transfer)]


def markdown_table(rows: List[dict]) -> str:
    done = [r for r in rows if r["status"] == "finished"]
    columns = markdown_columns(rows)
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    for r in done:
        lines.append("| " + " | ".join(_fmt(r.get(k), f) for k, _, f in columns) + " |")
    return "\n".join(lines)


def to_markdown(rows: List[dict], setup: Dict[str, str], plots: Sequence[str] = ()) -> str:
    out = ["# Patch-level training study", ""]
    for key, value in setup.items():
        out.append(f"- {key}: {value}")
    out += ["", "Every run is evaluated at token level (K = 1) on the same held-out split. "
            "`compute x` = the run's training FLOPs / those of token-only training on the full "
            "budget; `ideal x` = lambda/K + (1 - lambda). `dloss` < 0: lower validation loss "
            "than that token-only control.", ""]
    if any(r.get("transfer_control") for r in rows):
        out += ["A run of kind `alone` is the transfer control of a patch run: its token stage alone "
                "(the same data slice, steps, batch, LR schedule and warmup) from a fresh init. "
                "`transfer nats` = val loss of that control - val loss of the patch run: > 0 when "
                "the patch stage helped the token stage.", ""]
    if any(r["status"] == "finished" for r in rows):
        out.append(markdown_table(rows))
    else:
        out.append("No run has finished yet.")
    pending = [r for r in rows if r["status"] != "finished"]
    if pending:
        out += ["", "Not finished: " + ", ".join(f"{r['name']} ({r['status']})" for r in pending)]
    for p in plots:
        out += ["", f"![{os.path.splitext(p)[0]}]({p})"]
    return "\n".join(out) + "\n"
