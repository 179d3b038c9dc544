"""The evaluation's figures, like the paper's Figures 3-5: one line per approach over the use cases, per variant."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a benchmark machine
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["FIGURES", "plot_all", "plot_metric", "plot_s3"]

FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"
METRICS = {
    "bytes": ("storage", "storage per set (MB)", 1e-6),
    "save_s": ("time-to-save", "median time-to-save (s)", 1.0),
    "recover_s": ("time-to-recover", "median time-to-recover (s)", 1.0),
}
STYLE = {"per-model": ("tab:gray", "s"), "baseline": ("tab:blue", "o"), "update": ("tab:orange", "^"),
         "provenance": ("tab:green", "D")}


def _panel(ax: Any, name: str, variant: dict[str, Any], key: str, scale: float) -> None:
    for approach, measured in variant["approaches"].items():
        points = [(uc, v * scale) for uc, v in zip(variant["use_cases"], measured[key]) if v is not None]
        colour, marker = STYLE.get(approach, (None, "x"))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=marker, color=colour, label=approach)
    values = [v * scale for m in variant["approaches"].values() for v in m[key] if v]
    # Log scale where values span orders of magnitude, as in the paper's figures.
    if values and max(values) / min(values) > 30:
        ax.set_yscale("log")
    ax.set_title(f"{name} ({variant['parameters']:,} params, {variant['update_rate']:.0%} updated)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)


def plot_metric(results: dict[str, Any], key: str, tag: str) -> Path:
    """One PNG for one metric: a panel per variant, a line per approach."""
    title, label, scale = METRICS[key]
    variants = results["variants"]
    cols = min(3, len(variants))
    rows = math.ceil(len(variants) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, (name, variant) in zip(axes.flat, variants.items()):
        _panel(ax, name, variant, key, scale)
        ax.set_ylabel(label, fontsize=8)
    for ax in list(axes.flat)[len(variants):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{title}, {results['models']:,} models, median of {results['repeats']} runs", fontsize=10)
    fig.tight_layout()
    path = FIGURES / f"evaluation-{title}{tag}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_all(results: dict[str, Any], tag: str) -> list[Path]:
    """Storage, time-to-save and time-to-recover figures (the paper's Figures 3, 4 and 5)."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    return [plot_metric(results, key, tag) for key in METRICS]


def plot_s3(report: dict[str, Any], tag: str) -> Path:
    """HTTP requests per save and per recover on S3, per approach and use case."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key in zip(axes, ("save_requests", "recover_requests")):
        for approach in STYLE:
            rows = report[approach]
            colour, marker = STYLE[approach]
            ax.plot([r["use_case"] for r in rows], [r[key] for r in rows], marker=marker, color=colour, label=approach)
        ax.set_yscale("log")
        ax.set_title(f"{key.replace('_', ' ')} on S3 ({report['models']:,} models)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = FIGURES / f"evaluation-s3-requests{tag}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
