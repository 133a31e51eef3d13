"""The regime map: where patch-level training pays, from several finished studies.

Each study directory (tools/study.py --out DIR) is one point: one model size at one budget, with
a patch run, its transfer control (the token stage alone, `--transfer-controls`) and token-only
controls (0.5x: the equal compute of K=4, lambda=2/3; 1.0x: the same data). At each point:

- `transfer_nats` = loss(token stage alone) - loss(patch+token): > 0 when the patch stage helped;
- `gap_nats` = loss(patch+token) - loss(token-only control of the nearest compute)
  (results.delta_vs_equal_compute): < 0 when patch+token beats token-only at equal compute;

both against tokens per parameter: the patch run's token budget over the model's parameter
count. The count comes from the run's own config (config.yaml beside its last checkpoint), by
default without the embeddings (`non_embedding`: transformer layers and the final norm; the
input embedding and, untied, the output layer left out), or `total`. regime.csv has both.

The point of a study is its first patch run (the grid's centre) with its seed repeats (the
`-seedN` runs of it): the mean over seeds, and the standard deviation when there are several.

    points = regime_rows(["runs/regime/tiny-1M", "runs/regime/tiny-4M", ...])
    fits = fit_all(points)              # per size, with >= 3 points: linear in log10(tokens/param)
    write_regime("runs/regime", points, fits)   # regime.csv, regime.md, regime.png

`tools/study.py --regime-map OUT DIR [DIR ...] [--fit] [--params total]` is the command.
"""
import csv
import io
import json
import math
import os
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_patch import io as mp_io
from megatron_patch.analysis import results
from megatron_patch.analysis.grid import RunSpec
from megatron_patch.training import rundir
from megatron_patch.training.metrics import read_metrics

REGIME_CSV = "regime.csv"
REGIME_MD = "regime.md"
PARAM_COUNTS = ("non_embedding", "total")
METRICS = ("transfer_nats", "gap_nats")
MIN_FIT_POINTS = 3

CSV_FIELDS = ["size", "study", "patch_run", "seeds", "params_used", "params_non_embedding", "params_total",
              "train_tokens", "tokens_per_param", "epochs", "patch_val_loss", "alone_val_loss",
              "equal_compute_control", "equal_compute_val_loss", "full_val_loss", "transfer_nats",
              "transfer_nats_std", "gap_nats", "gap_nats_std", "ppl_vs_equal_compute", "gap_full_nats"]


class RegimeError(ValueError):
    """A study directory that cannot give a point of the map; the message says which and why."""


# ----------------------------------------------------------------------------- one study


def load_study(study_dir: str) -> Tuple[List[RunSpec], str]:
    """(the grid's runs, its runs directory) from STUDY/grid.json."""
    path = os.path.join(study_dir, "grid.json")
    try:
        with open(path, encoding="utf-8") as f:
            grid = json.load(f)
    except FileNotFoundError:
        raise RegimeError(f"{path} not found: is {study_dir} a tools/study.py --out directory?") from None
    except (OSError, json.JSONDecodeError) as err:
        raise RegimeError(f"{path} is unreadable ({err})") from None
    specs = [RunSpec(**r) for r in grid.get("runs", [])]
    runs_dir = grid.get("runs_dir") or ""
    if not os.path.isdir(runs_dir):  # the study was moved: its runs beside grid.json
        runs_dir = os.path.join(study_dir, "runs")
    return specs, runs_dir


def model_params(run_dir: str) -> dict:
    """{"size", "params_total", "params_non_embedding"} of the model a run trained, from the
    config.yaml beside the newest checkpoint of its last stage (the resolved run config)."""
    from megatron_patch.training.config import load_yaml, model_from_dict

    for stage in reversed(rundir.stage_names(run_dir)):
        name = rundir.read_tracker(rundir.stage_dir(run_dir, stage))
        path = os.path.join(rundir.stage_dir(run_dir, stage), name or "", rundir.CONFIG_FILE)
        if name and os.path.isfile(path):
            break
    else:
        raise RegimeError(f"{run_dir}: no checkpoint with a {rundir.CONFIG_FILE}, so no model config to count "
                          "parameters from")
    try:
        config = load_yaml(path)
        model, preset = model_from_dict(config.get("model") or {})
    except ValueError as err:
        raise RegimeError(f"{path}: {err}") from None
    tp = int((config.get("parallel") or {}).get("tensor_model_parallel_size") or 1)
    total = model.num_params(tp)
    embedding = model.padded_vocab_size(tp) * model.hidden_size * (1 if model.tie_embeddings else 2)
    return {"size": preset or f"{model.num_layers}x{model.hidden_size}", "params_total": total,
            "params_non_embedding": total - embedding}


def _epochs(run_dir: str) -> Optional[float]:
    """The most epochs any stage's data made over its share of the corpus (the trainer's "data" records)."""
    try:
        values = [r.get("epochs") for r in read_metrics(run_dir) if r.get("kind") == "data"]
    except (OSError, ValueError):
        return None
    values = [v for v in values if isinstance(v, (int, float))]
    return max(values) if values else None


def _mean_std(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def study_point(study_dir: str, size: Optional[str] = None, params: str = "non_embedding") -> dict:
    """One point of the map from a finished study (see the module's docstring)."""
    if params not in PARAM_COUNTS:
        raise ValueError(f"params must be one of {PARAM_COUNTS}, got {params!r}")
    specs, runs_dir = load_study(study_dir)
    rows = results.collect(specs, runs_dir)
    patch = [r for r in rows if r["kind"] == "patch"]
    if not patch:
        raise RegimeError(f"{study_dir}: the grid has no patch run")
    centre = patch[0]
    members = [centre] + [r for r in patch if r.get("varies") == "seed"
                          and r["name"].startswith(centre["name"] + "-seed")]
    done = [r for r in members if r["status"] == "finished"]
    if not done:
        raise RegimeError(f"{study_dir}: patch run {centre['name']} has not finished")
    if not any(r.get("transfer_control") for r in members):
        raise RegimeError(f"{study_dir}: patch run {centre['name']} has no transfer control "
                          "(run the study with --transfer-controls)")
    counts = model_params(os.path.join(runs_dir, centre["name"]))
    by_name = {r["name"]: r for r in rows}
    transfer, transfer_std = _mean_std([r.get("transfer_nats") for r in done])
    gap, gap_std = _mean_std([r.get("delta_vs_equal_compute") for r in done])
    alone = by_name.get(centre.get("transfer_control")) or {}
    equal = by_name.get(centre.get("equal_compute_control")) or {}
    full = next((r for r in rows if r["kind"] == "token" and r["budget_fraction"] == 1.0
                 and r["status"] == "finished"), {})
    used = counts[f"params_{params}"]
    return {
        "size": size or counts["size"],
        "study": study_dir,
        "patch_run": centre["name"],
        "seeds": len(done),
        "params_used": used,
        "param_count": params,
        "params_non_embedding": counts["params_non_embedding"],
        "params_total": counts["params_total"],
        "train_tokens": centre["train_tokens"],
        "tokens_per_param": centre["train_tokens"] / used,
        "epochs": _epochs(os.path.join(runs_dir, centre["name"])),
        "patch_val_loss": _mean_std([r.get("final_val_loss") for r in done])[0],
        "alone_val_loss": alone.get("final_val_loss"),
        "equal_compute_control": centre.get("equal_compute_control"),
        "equal_compute_val_loss": equal.get("final_val_loss"),
        "full_val_loss": full.get("final_val_loss"),
        "transfer_nats": transfer,
        "transfer_nats_std": transfer_std,
        "gap_nats": gap,
        "gap_nats_std": gap_std,
        "ppl_vs_equal_compute": math.exp(gap) - 1.0 if gap is not None else None,
        "gap_full_nats": _mean_std([r.get("delta_vs_full") for r in done])[0],
    }


def regime_rows(study_dirs: Sequence[str], params: str = "non_embedding") -> List[dict]:
    """A point per study directory ("SIZE=DIR" names the size; default: the model preset, else
    LAYERSxHIDDEN), ordered by size (parameters) and tokens per parameter."""
    points = []
    for item in study_dirs:
        size, sep, path = item.partition("=")
        if not sep:
            size, path = None, item
        points.append(study_point(path, size or None, params))
    order = {}
    for p in points:
        order.setdefault(p["size"], p["params_used"])
    return sorted(points, key=lambda p: (order[p["size"]], p["size"], p["tokens_per_param"]))


# ----------------------------------------------------------------------------- the fit


def fit_line(tokens_per_param: Sequence[float], values: Sequence[float]) -> Optional[dict]:
    """Least squares y = intercept + slope * log10(tokens per parameter), with the standard
    errors from the residuals (n - 2 degrees of freedom), and where the line crosses zero: the
    tokens per parameter at the crossing and its one-standard-error range (delta method on
    x0 = -intercept / slope, with the covariance of the two). None with fewer than
    MIN_FIT_POINTS points or all at one tokens-per-parameter."""
    pts = [(math.log10(x), y) for x, y in zip(tokens_per_param, values) if y is not None and x > 0]
    n = len(pts)
    if n < MIN_FIT_POINTS:
        return None
    mx = sum(x for x, _ in pts) / n
    my = sum(y for _, y in pts) / n
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx == 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    intercept = my - slope * mx
    rss = sum((y - intercept - slope * x) ** 2 for x, y in pts)
    s2 = rss / (n - 2)
    var_slope = s2 / sxx
    var_intercept = s2 * (1.0 / n + mx ** 2 / sxx)
    cov = -mx * s2 / sxx
    out = {"n": n, "slope": slope, "intercept": intercept, "slope_se": math.sqrt(var_slope),
           "intercept_se": math.sqrt(var_intercept), "residual_sd": math.sqrt(s2),
           "crossing_log10_tpp": None, "crossing_log10_se": None, "crossing_tpp": None,
           "crossing_tpp_low": None, "crossing_tpp_high": None}
    if slope != 0:
        x0 = -intercept / slope
        var_x0 = (var_intercept + x0 ** 2 * var_slope + 2 * x0 * cov) / slope ** 2
        se = math.sqrt(max(var_x0, 0.0))
        out.update(crossing_log10_tpp=x0, crossing_log10_se=se, crossing_tpp=_pow10(x0),
                   crossing_tpp_low=_pow10(x0 - se), crossing_tpp_high=_pow10(x0 + se))
    return out


def _pow10(x: float) -> float:
    return 10.0 ** x if x < 300 else math.inf


def fit_all(points: Sequence[dict]) -> Dict[tuple, dict]:
    """{(size, metric): fit_line(...)} for every size with >= MIN_FIT_POINTS points."""
    fits = {}
    for size in dict.fromkeys(p["size"] for p in points):
        pts = [p for p in points if p["size"] == size]
        for metric in METRICS:
            fit = fit_line([p["tokens_per_param"] for p in pts], [p[metric] for p in pts])
            if fit is not None:
                fits[(size, metric)] = fit
    return fits


def fit_lines(points: Sequence[dict], fits: Dict[tuple, dict]) -> List[str]:
    """The fits in words (one line each), and which sizes had too few points."""
    lines = []
    names = {"transfer_nats": "transfer", "gap_nats": "gap to equal compute"}
    for size in dict.fromkeys(p["size"] for p in points):
        n = sum(p["size"] == size for p in points)
        if not any((size, m) in fits for m in METRICS):
            lines.append(f"{size}: {n} point(s), no fit (needs {MIN_FIT_POINTS} at distinct tokens per parameter)")
            continue
        top = max(p["tokens_per_param"] for p in points if p["size"] == size)
        for metric in METRICS:
            fit = fits.get((size, metric))
            if fit is None:
                continue
            text = (f"{size}, {names[metric]}: {fit['intercept']:+.4f} ({fit['intercept_se']:.4f}) "
                    f"{fit['slope']:+.4f} ({fit['slope_se']:.4f}) x log10(tokens/param), n={fit['n']}, "
                    f"residual sd {fit['residual_sd']:.4f} nats")
            if fit["crossing_tpp"] is None:
                text += "; flat: no zero crossing"
            else:
                text += (f"; zero at {fit['crossing_tpp']:.3g} tokens/param (1 s.e.: "
                         f"{fit['crossing_tpp_low']:.3g} to {fit['crossing_tpp_high']:.3g}; "
                         f"{fit['crossing_tpp'] / top:.3g}x the largest measured, {top:.3g})")
            lines.append(text)
    return lines


# ----------------------------------------------------------------------------- report


def _fmt(value, fmt: str) -> str:
    if value is None:
        return ""
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def to_csv(points: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS + ["param_count"], extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for p in points:
        w.writerow({k: ("" if p.get(k) is None else p.get(k)) for k in CSV_FIELDS + ["param_count"]})
    return buf.getvalue()


MD_COLUMNS = [
    ("size", "size", "{}"), ("params_used", "params", "{:,}"), ("train_tokens", "budget tokens", "{:,}"),
    ("tokens_per_param", "tokens/param", "{:.3g}"), ("epochs", "epochs", "{:.2f}"), ("seeds", "seeds", "{}"),
    ("patch_val_loss", "patch+token", "{:.4f}"), ("alone_val_loss", "token stage alone", "{:.4f}"),
    ("equal_compute_val_loss", "token-only, equal compute", "{:.4f}"), ("full_val_loss", "token-only 1.0x", "{:.4f}"),
    ("transfer_nats", "transfer nats", "{:+.4f}"), ("transfer_nats_std", "sd", "{:.4f}"),
    ("gap_nats", "gap nats", "{:+.4f}"), ("gap_nats_std", "sd", "{:.4f}"),
    ("ppl_vs_equal_compute", "ppl vs equal compute", "{:+.1%}"), ("study", "study", "{}"),
]


def to_markdown(points: Sequence[dict], fit_text: Sequence[str] = (), plot: Optional[str] = None) -> str:
    count = points[0]["param_count"] if points else "non_embedding"
    out = ["# Regime map: where patch-level training pays", "",
           f"One row per study (model size x budget). `params`: {count.replace('_', '-')} parameters "
           "from the run's config; `tokens/param` = the patch run's token budget / params. "
           "`transfer nats` = val loss of the token stage alone (fresh init) - val loss of "
           "patch+token: > 0 when the patch stage helped. `gap nats` = val loss of patch+token - "
           "val loss of token-only at equal compute: < 0 when patch+token pays. "
           "`sd`: standard deviation over seeds (empty with one).", ""]
    out.append("| " + " | ".join(h for _, h, _ in MD_COLUMNS) + " |")
    out.append("|" + "---|" * len(MD_COLUMNS))
    for p in points:
        out.append("| " + " | ".join(_fmt(p.get(k), f) for k, _, f in MD_COLUMNS) + " |")
    if fit_text:
        out += ["", "Fits (per size, least squares in log10 tokens per parameter; standard errors in "
                "parentheses). An extrapolation far beyond the measured range says where the trend "
                "leads, not what happens there.", ""]
        out += [f"- {line}" for line in fit_text]
    if plot:
        out += ["", f"![regime map]({plot})"]
    return "\n".join(out) + "\n"


def write_regime(out_dir: str, points: Sequence[dict], fit: bool = False) -> dict:
    """OUT/regime.csv, OUT/regime.md and OUT/regime.png; returns {"fits", "fit_text", "plot"}."""
    from megatron_patch.analysis import plots

    os.makedirs(out_dir, exist_ok=True)
    fits = fit_all(points) if fit else {}
    text = fit_lines(points, fits) if fit else []
    drawn = plots.plot_regime(list(points), os.path.join(out_dir, plots.REGIME_PLOT), fits)
    plot = plots.REGIME_PLOT if drawn else None
    mp_io.write_text(os.path.join(out_dir, REGIME_CSV), to_csv(points))
    mp_io.write_text(os.path.join(out_dir, REGIME_MD), to_markdown(points, text, plot))
    return {"fits": fits, "fit_text": text, "plot": plot}
