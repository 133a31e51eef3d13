"""Tables, CSV and plots of FFN neuron activation shares (analysis/activation.py measures them).

- inputs comparison, one model at K=1 and at K: CSV columns `layer, share_K1, share_K{K}, diff`;
- models comparison, each model at its own K (the paper's Fig. 8): `layer, share_<name>, ...`.
Shares are fractions; the last row is the mean over layers.
"""
from typing import Dict, List, Sequence

import numpy as np

from megatron_patch.analysis.activation import Measured
from megatron_patch.io import save_figure


def inputs_rows(shares: Dict[int, List[float]], K: int) -> List[dict]:
    rows = [{"layer": i + 1, "share_K1": a, f"share_K{K}": b, "diff": b - a}
            for i, (a, b) in enumerate(zip(shares[1], shares[K]))]
    mean_1, mean_k = float(np.mean(shares[1])), float(np.mean(shares[K]))
    rows.append({"layer": "mean", "share_K1": mean_1, f"share_K{K}": mean_k, "diff": mean_k - mean_1})
    return rows


def models_rows(measured: Sequence[Measured]) -> List[dict]:
    layers = len(measured[0].shares)
    if any(len(m.shares) != layers for m in measured):
        raise ValueError("the models differ in their number of layers: "
                         + ", ".join(f"{m.name} {len(m.shares)}" for m in measured))
    rows = [{"layer": i + 1, **{f"share_{m.name}": m.shares[i] for m in measured}} for i in range(layers)]
    rows.append({"layer": "mean", **{f"share_{m.name}": float(np.mean(m.shares)) for m in measured}})
    return rows


def to_csv(rows: List[dict]) -> str:
    keys = list(rows[0])
    lines = [",".join(keys)]
    for r in rows:
        lines.append(",".join(str(r[k]) if isinstance(r[k], (int, str)) else f"{r[k]:.6f}" for k in keys))
    return "\n".join(lines) + "\n"


def inputs_markdown(rows: List[dict], K: int, header: str) -> str:
    lines = [header, "", f"| layer | share K=1 | share K={K} | K={K} - K=1 |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['layer']} | {r['share_K1']:.4f} | {r[f'share_K{K}']:.4f} | {r['diff']:+.4f} |")
    return "\n".join(lines) + "\n"


def models_markdown(rows: List[dict], measured: Sequence[Measured], header: str) -> str:
    lines = [header, "", "| layer | " + " | ".join(f"{m.name} (K={m.patch_size})" for m in measured) + " |",
             "|---|" + "---|" * len(measured)]
    for r in rows:
        lines.append(f"| {r['layer']} | " + " | ".join(f"{r[f'share_{m.name}']:.4f}" for m in measured) + " |")
    return "\n".join(lines) + "\n"


def _plot(lines, path: str, title: str) -> None:
    """lines: [(label, shares, marker)]; x = layer, y = % activated."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, shares, marker in lines:
        layers = np.arange(1, len(shares) + 1)
        ax.plot(layers, np.array(shares) * 100, marker=marker, label=label)
    ax.set_xlabel("layer")
    ax.set_ylabel("activated FFN neurons (%)")
    ax.set_xticks(np.arange(1, max(len(s) for _, s, _ in lines) + 1))
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)


def plot_inputs(shares: Dict[int, List[float]], K: int, path: str, title: str) -> None:
    _plot([("token input (K=1)", shares[1], "o"), (f"patch input (K={K})", shares[K], "s")], path, title)


def plot_models(measured: Sequence[Measured], path: str, title: str) -> None:
    markers = "osD^v<>p*h"
    _plot([(f"{m.name} (K={m.patch_size})", m.shares, markers[i % len(markers)])
           for i, m in enumerate(measured)], path, title)
