"""Figures logged to MLflow (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # workers and CI have no display

import matplotlib.pyplot as plt  # noqa: E402
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
