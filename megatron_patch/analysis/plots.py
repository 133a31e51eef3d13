"""Study plots: validation loss against training FLOPs, final loss against K and lambda, final
loss of each recipe-knob setting against the centre's, and the regime map (transfer and the gap
to the equal-compute control against tokens per parameter, one line per model size).

Imports matplotlib at import time: `study` and `regime` import this module only when they draw."""
import math
import os
from collections import defaultdict
from typing import List, Optional

import matplotlib

matplotlib.use("Agg")  # files only; no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402

from megatron_patch.analysis.results import eval_curve  # noqa: E402
from megatron_patch.io import save_figure  # noqa: E402

FLOPS_PLOT = "val_loss_vs_flops.png"
REGIME_PLOT = "regime.png"
K_LAMBDA_PLOT = "val_loss_vs_K_lambda.png"
KNOBS_PLOT = "val_loss_by_knob.png"


def plot_loss_vs_flops(rows: List[dict], runs_dir: str, path: str) -> bool:
    """One curve per finished run (token-level val loss at each evaluation); False if nothing to draw."""
    fig, ax = plt.subplots(figsize=(9, 5))
    drawn = 0
    control_styles = iter(["--", ":", "-.", (0, (5, 1, 1, 1))] * 4)
    for r in rows:
        if r["status"] != "finished":
            continue
        curve = eval_curve(os.path.join(runs_dir, r["name"]))
        xs = [p["flops"] for p in curve]
        ys = [p["val_loss"] for p in curve]
        if not xs and r.get("final_val_loss") is not None:  # no eval records: the final point
            xs, ys = [r["total_flops"]], [r["final_val_loss"]]
        if not xs:
            continue
        if r["kind"] == "token":
            style = dict(linestyle=next(control_styles), color="black")
        elif r["kind"] == "alone":  # a transfer control: the token stage alone, from a fresh init
            style = dict(linestyle=(0, (1, 1)), marker="x", ms=3)
        else:
            style = dict(marker="o" if r["batch_policy"] == "same_tokens" else "s", ms=3)
        (line,) = ax.plot(xs, ys, label=r["name"], **style)
        ax.plot(xs[-1:], ys[-1:], marker="*", ms=10, color=line.get_color())
        drawn += 1
    if not drawn:
        plt.close(fig)
        return False
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (model, forward + backward)")
    ax.set_ylabel("token-level validation loss")
    ax.set_title("Validation loss vs compute (star: end of run)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(fig, path)
    plt.close(fig)
    return True


def plot_loss_vs_k_lambda(rows: List[dict], path: str) -> bool:
    """Left: final loss vs K (a line per lambda, policy); right: vs lambda (a line per K, policy)."""
    # Runs that change a recipe knob or the seed sit at the centre's K and lambda: plot_knobs.
    patch = [r for r in rows if r["status"] == "finished" and r["kind"] == "patch"
             and r.get("final_val_loss") is not None and r.get("varies") is None]
    controls = [r for r in rows if r["status"] == "finished" and r["kind"] == "token"
                and r.get("final_val_loss") is not None]
    if not patch:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, x_key, group_key, x_label in (
        (axes[0], "patch_size", "patch_fraction", "patch size K"),
        (axes[1], "patch_fraction", "patch_size", "patch fraction lambda"),
    ):
        groups = defaultdict(list)
        for r in patch:
            groups[(r[group_key], r["batch_policy"])].append(r)
        for (g, policy), members in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1])):
            members.sort(key=lambda r: r[x_key])
            label = (f"lambda={g:.3g}" if group_key == "patch_fraction" else f"K={g}") + f", {policy}"
            ax.plot([r[x_key] for r in members], [r["final_val_loss"] for r in members],
                    marker="o", label=label)
        for c in controls:
            ax.axhline(c["final_val_loss"], linestyle="--", color="gray", linewidth=1)
            ax.annotate(c["name"], (1.0, c["final_val_loss"]), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=7, color="gray")
        ax.set_xlabel(x_label)
        if x_key == "patch_size":
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({r["patch_size"] for r in patch}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("final token-level validation loss")
    fig.suptitle("Final validation loss by K and lambda (dashed: token-only controls)")
    save_figure(fig, path)
    plt.close(fig)
    return True


def plot_knobs(rows: List[dict], path: str) -> bool:
    """One bar per finished patch run at the centre's K and lambda (the centre, each knob
    setting, the repeats with other seeds), with the controls as vertical lines; False when
    the grid varies no knob or seed."""
    if not any(r.get("varies") for r in rows):
        return False
    done = [r for r in rows if r["status"] == "finished" and r.get("final_val_loss") is not None]
    centre = next((r for r in done if r["kind"] == "patch"), None)
    bars = [r for r in done if r["kind"] == "patch" and (r is centre or r.get("varies"))]
    if not bars:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(bars) + 1.5))
    colors = {None: "tab:blue", "seed": "tab:gray"}
    ax.barh(range(len(bars)), [r["final_val_loss"] for r in bars],
            color=[colors.get(r.get("varies"), "tab:orange") for r in bars])
    ax.set_yticks(range(len(bars)))
    ax.set_yticklabels([r["name"] for r in bars], fontsize=7)
    ax.invert_yaxis()
    losses = [r["final_val_loss"] for r in bars]
    for c in done:
        if c["kind"] == "token":
            ax.axvline(c["final_val_loss"], linestyle="--", color="black", linewidth=1)
            ax.annotate(c["name"], (c["final_val_loss"], 1.0), xycoords=("data", "axes fraction"),
                        rotation=90, ha="right", va="top", fontsize=7)
            losses.append(c["final_val_loss"])
    span = max(losses) - min(losses)
    ax.set_xlim(min(losses) - 0.5 * span - 1e-3, max(losses) + 0.2 * span + 1e-3)
    ax.set_xlabel("final token-level validation loss (blue: centre, orange: one knob changed, "
                  "gray: another seed; dashed: token-only controls)")
    ax.grid(True, axis="x", alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)
    return True


def plot_regime(points: List[dict], path: str, fits: Optional[dict] = None) -> bool:
    """Left: transfer_nats, right: the gap to the equal-compute control (nats; < 0: patch+token
    is better), both against tokens per parameter (log x), one line per model size (`points`:
    regime.regime_rows); `fits`: {(size, metric): regime.fit_line result} drawn dashed. False
    when there is nothing to draw."""
    metrics = (("transfer_nats", "transfer (nats): loss(token stage alone) - loss(patch+token)"),
               ("gap_nats", "gap (nats): loss(patch+token) - loss(token-only, equal compute)"))
    if not any(p.get(m) is not None for p in points for m, _ in metrics):
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    sizes = []
    for p in points:
        if p["size"] not in sizes:
            sizes.append(p["size"])
    colors = {s: f"C{i % 10}" for i, s in enumerate(sizes)}
    for ax, (metric, label) in zip(axes, metrics):
        for size in sizes:
            pts = sorted((p for p in points if p["size"] == size and p.get(metric) is not None),
                         key=lambda p: p["tokens_per_param"])
            if not pts:
                continue
            xs = [p["tokens_per_param"] for p in pts]
            ys = [p[metric] for p in pts]
            errs = [p.get(metric + "_std") or 0.0 for p in pts]
            ax.errorbar(xs, ys, yerr=errs if any(errs) else None, marker="o", ms=4, capsize=3,
                        color=colors[size], label=f"{size} ({pts[0]['params_used'] / 1e6:.2g}M "
                        f"{pts[0].get('param_count', 'non_embedding').replace('_', '-')} params)")
            fit = (fits or {}).get((size, metric))
            if fit:
                lo, hi = min(xs), max(xs)
                cross = fit.get("crossing_tpp")  # extended to the zero crossing when it is near
                if cross and lo / 100 <= cross <= hi * 100:
                    lo, hi = min(lo, cross), max(hi, cross)
                grid = [lo * (hi / lo) ** (i / 50) for i in range(51)]
                ax.plot(grid, [fit["intercept"] + fit["slope"] * math.log10(x) for x in grid],
                        linestyle="--", linewidth=1, color=colors[size])
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap
        ax.set_xlabel("training tokens per parameter")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title("transfer: > 0 when the patch stage helped")
    axes[1].set_title("against token-only of equal compute: < 0 when patch+token pays")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return True
