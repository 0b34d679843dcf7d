"""Figures logged to MLflow (matplotlib, headless)."""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")  # workers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402


def confusion_figure(confusion: Tensor, classes: list[str], *, title: str) -> Figure:
    """Row-normalised confusion matrix (rows = true class) with the raw counts written in the cells."""
    counts = confusion.double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if counts[i, j] > 0:
                color = "white" if rates[i, j] > 0.5 else "black"
                ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    plt.close(fig)
    return fig


def _best(rows: list[dict[str, Any]], metric: str, key: tuple[str, ...]) -> dict[tuple[Any, ...], float]:
    """Best `metric` (x100) over the rows sharing each value of `key` (the other swept keys maxed out)."""
    best: dict[tuple[Any, ...], float] = {}
    for r in rows:
        k = tuple(r[name] for name in key)
        best[k] = max(best.get(k, -math.inf), 100 * r[metric])
    return best


def label_efficiency_figure(rows: list[dict[str, Any]], metric: str) -> Figure:
    """Best `metric` against the labeled fraction, one line per algorithm (over the other swept keys)."""
    best = _best(rows, metric, ("algorithm.name", "data.labeled_fraction"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for algorithm in sorted({a for a, _ in best}):
        points = sorted((100 * f, v) for (a, f), v in best.items() if a == algorithm and f is not None)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=algorithm)
    ax.set_xlabel("labeled videos (%)")
    ax.set_ylabel(f"{metric} (%), best trial")
    ax.set_title("label efficiency")
    if best:
        ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def tau_lambda_heatmap(rows: list[dict[str, Any]], metric: str) -> Figure | None:
    """Best `metric` per (tau, lambda_u) cell, one panel per algorithm; None unless both were swept."""
    rows = [r for r in rows if r.get("algorithm.tau") is not None and r.get("algorithm.lambda_u") is not None]
    if not rows:
        return None
    best = _best(rows, metric, ("algorithm.name", "algorithm.tau", "algorithm.lambda_u"))
    algorithms = sorted({a for a, _, _ in best})
    taus = sorted({t for _, t, _ in best})
    lambdas = sorted({lam for _, _, lam in best})
    fig, axes = plt.subplots(1, len(algorithms), figsize=(1.2 + 0.9 * len(lambdas) * len(algorithms) + 1.5, 3.5),
                             squeeze=False)
    for ax, algorithm in zip(axes[0], algorithms, strict=True):
        grid = np.full((len(taus), len(lambdas)), np.nan)
        for (a, t, lam), value in best.items():
            if a == algorithm:
                grid[taus.index(t), lambdas.index(lam)] = value
        # One colour scale for every panel, so algorithms compare by colour too.
        ax.imshow(grid, cmap="viridis", aspect="auto", vmin=min(best.values()), vmax=max(best.values()))
        ax.set_xticks(range(len(lambdas)), [f"{v:g}" for v in lambdas])
        ax.set_yticks(range(len(taus)), [f"{v:g}" for v in taus])
        ax.set_xlabel("lambda_u")
        ax.set_ylabel("tau")
        ax.set_title(algorithm, fontsize=9)
        for i in range(len(taus)):
            for j in range(len(lambdas)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=8, color="white")
    fig.suptitle(f"{metric} (%), best over the other swept keys", fontsize=9)
    fig.tight_layout()
    plt.close(fig)
    return fig


def metric_curve_figure(points: list[tuple[int, float]], *, metric: str, title: str,
                        chance: float | None = None) -> Figure:
    """A metric (0-1, drawn in %) against the step, with chance as a dashed line (e.g. k-NN top-1 while
    pretraining)."""
    points = sorted(points)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([s for s, _ in points], [100 * v for _, v in points], marker="o", label=metric)
    if chance is not None:
        ax.axhline(100 * chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({100 * chance:.1f} %)")
    ax.set_xlabel("step")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig
