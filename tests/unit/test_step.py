"""Tests for ssl_core.step: the unlabeled clips' true labels never reach an algorithm or a loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from ssl_core.algorithms import get_algorithm
from ssl_core.algorithms.base import StepOutput
from ssl_core.models import build_model
from ssl_core.step import ssl_step


def _models(roles: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    # Eval mode: BatchNorm uses its (fixed) running stats, so repeated runs see exactly the same function.
    return {role: build_model("small3d_w0.5", num_classes=3).eval() for role in roles}


def _batches(true_label: Tensor | None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    g = torch.Generator().manual_seed(1)
    labeled = {"video": torch.randn(2, 3, 4, 16, 16, generator=g), "label": torch.tensor([0, 2])}
    unlabeled = {
        "weak": torch.randn(2, 3, 4, 16, 16, generator=g),
        "strong": torch.randn(2, 3, 4, 16, 16, generator=g),
    }
    if true_label is not None:
        unlabeled["true_label"] = true_label
    return labeled, unlabeled


def _run(name: str, true_label: Tensor | None) -> tuple[StepOutput, list[Tensor]]:
    cls = get_algorithm(name)
    models = _models(cls.roles)
    # tau = 0: every pseudo-label passes, so the unlabeled loss is non-zero and would show any leak.
    out = ssl_step(cls(models, cls.Params(tau=0.0, lambda_u=1.0)), *_batches(true_label))
    out.loss.backward()
    grads = [p.grad.clone() for role in cls.roles for p in models[role].parameters()]
    return out, grads


@pytest.mark.parametrize("name", ["fixmatch", "cmpl", "svformer"])
def test_true_labels_never_reach_the_loss(name: str) -> None:
    runs = [
        _run(name, torch.tensor([0, 1])),
        _run(name, torch.tensor([2, 2])),
        _run(name, None),
    ]
    reference_out, reference_grads = runs[0]
    assert reference_out.metrics["loss/unsup_primary"].item() > 0
    for out, grads in runs[1:]:
        assert torch.equal(out.loss, reference_out.loss)
        assert all(torch.equal(a, b) for a, b in zip(grads, reference_grads, strict=True))
    # The truth did reach the metrics, which is where it belongs: the two truths disagree on both clips.
    roles = get_algorithm(name).roles
    for role in roles:
        acc_a = runs[0][0].metrics[f"pseudo/accuracy_{role}"].item()
        acc_b = runs[1][0].metrics[f"pseudo/accuracy_{role}"].item()
        hard = runs[0][0].pseudo[role][0]
        assert acc_a == pytest.approx(float((hard == torch.tensor([0, 1])).float().mean()))
        assert acc_b == pytest.approx(float((hard == torch.tensor([2, 2])).float().mean()))
        assert f"pseudo/accuracy_{role}" not in runs[2][0].metrics


class _RecordingAlgorithm:
    """Wraps an algorithm and records the keys of the unlabeled batch its train_step received."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.seen: list[set[str]] = []

    def train_step(self, labeled: dict, unlabeled: dict | None) -> StepOutput:
        self.seen.append(set(unlabeled or {}))
        return self.inner.train_step(labeled, unlabeled)


def test_train_step_receives_no_true_label_and_callers_batch_is_untouched() -> None:
    cls = get_algorithm("fixmatch")
    recorder = _RecordingAlgorithm(cls(_models(cls.roles), cls.Params()))
    labeled, unlabeled = _batches(torch.tensor([0, 1]))
    out = ssl_step(recorder, labeled, unlabeled)
    assert recorder.seen == [{"weak", "strong"}]
    assert "true_label" in unlabeled  # a shallow copy was popped, not the caller's dict
    accuracy = out.metrics["pseudo/accuracy_primary"].item()
    assert math.isnan(accuracy) or 0.0 <= accuracy <= 1.0


def test_supervised_step_without_unlabeled() -> None:
    cls = get_algorithm("supervised")
    labeled, _ = _batches(None)
    out = ssl_step(cls(_models(cls.roles), None), labeled, None)
    assert out.loss.ndim == 0 and out.loss.requires_grad
