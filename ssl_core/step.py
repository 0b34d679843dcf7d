"""The one place an SSL step happens, shared by the Ray worker and the Ray-free loop.

It strips the unlabeled clips' true labels (known on benchmarks) BEFORE the algorithm sees the batch,
then uses them only to measure pseudo-label accuracy. tests/unit/test_step.py proves they never reach a loss.
"""

from __future__ import annotations

from torch import Tensor

from ssl_core.algorithms.base import Algorithm, StepOutput
from ssl_core.metrics import pseudo_label_accuracy

TRUE_LABEL_KEY = "true_label"


def ssl_step(
    algorithm: Algorithm,
    labeled: dict[str, Tensor],
    unlabeled: dict[str, Tensor] | None,
) -> StepOutput:
    """Run one algorithm step; add `pseudo/accuracy_<role>` when the truth was given (nan: none masked)."""
    truth: Tensor | None = None
    if unlabeled is not None:
        unlabeled = dict(unlabeled)  # shallow copy: the caller's batch keeps its key
        truth = unlabeled.pop(TRUE_LABEL_KEY, None)
    out = algorithm.train_step(labeled, unlabeled)
    if truth is not None:
        for role, (hard, mask) in out.pseudo.items():
            out.metrics[f"pseudo/accuracy_{role}"] = pseudo_label_accuracy(hard, mask, truth)
    return out
