"""Hand-computed references and preset-logit "models" shared by the algorithm tests.

Expected values in the tests are worked out with these plain-float helpers, never with the code under test.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def softmax(logits: list[float]) -> list[float]:
    z = sum(math.exp(v) for v in logits)
    return [math.exp(v) / z for v in logits]


class TableModel(nn.Module):
    """A "model" whose logits are preset per input: an input whose every value is k gets row k of table."""

    def __init__(self, rows: list[list[float]]) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(rows, dtype=torch.float64))

    def forward(self, video: torch.Tensor) -> torch.Tensor:  # (B, 1, 1, 1, 1) ids -> (B, C)
        return self.table[video.flatten(1)[:, 0].long()]


def ids(*values: int) -> torch.Tensor:  # (B, 1, 1, 1, 1), the shape joint_forward needs to concatenate
    return torch.tensor(values, dtype=torch.float64).view(-1, 1, 1, 1, 1)


# Rows: 0 labeled, 1-4 weak views, 5-8 strong views of unlabeled clips 0..3.
FIXMATCH_ROWS = [
    [2.0, 1.0, 0.0],  # labeled, label 1
    [6.0, 0.0, 0.0],  # weak u0: p_max = e^6 / (e^6 + 2) = 0.995 -> confident, class 0
    [1.0, 0.0, 0.0],  # weak u1: 0.576 -> not confident
    [0.0, 1.5, 0.0],  # weak u2: 0.69 -> not confident
    [0.0, 0.0, 0.2],  # weak u3: not confident
    [0.5, 1.0, -0.3],  # strong u0
    [0.0, 3.0, 0.0],  # strong u1
    [1.0, 1.0, 1.0],  # strong u2
    [0.0, 0.0, 0.0],  # strong u3
]


def fixmatch_batch() -> tuple[dict, dict]:
    labeled = {"video": ids(0), "label": torch.tensor([1])}
    unlabeled = {"weak": ids(1, 2, 3, 4), "strong": ids(5, 6, 7, 8)}
    return labeled, unlabeled
