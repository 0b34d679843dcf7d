"""Tests for ssl_core.metrics on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from ssl_core.metrics import (
    WindowMeans,
    agreement,
    confusion_matrix,
    mask_rate,
    per_class_accuracy,
    pseudo_label_accuracy,
    topk_correct,
)


def test_topk_correct_counts_and_clips_k() -> None:
    logits = torch.tensor(
        [
            [0.9, 0.05, 0.03, 0.02],  # label 0: top-1 hit
            [0.1, 0.2, 0.6, 0.1],  # label 1: second best -> top-2 hit only
            [0.4, 0.3, 0.2, 0.1],  # label 3: last -> hit only when k covers all 4 classes
        ]
    )
    labels = torch.tensor([0, 1, 3])
    assert topk_correct(logits, labels, ks=(1, 2, 5)) == {1: 1, 2: 2, 5: 3}


def test_topk_correct_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="labels"):
        topk_correct(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))


def test_confusion_matrix_rows_are_true_classes() -> None:
    preds = torch.tensor([0, 1, 1, 2, 0])
    labels = torch.tensor([0, 0, 1, 2, 2])
    expected = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 1]])
    cm = confusion_matrix(preds, labels, 3)
    assert torch.equal(cm, expected) and cm.dtype == torch.int64


def test_confusion_matrix_rejects_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"preds outside \[0, 3\)"):
        confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)


def test_per_class_accuracy_with_empty_class() -> None:
    cm = torch.tensor([[3, 1, 0], [0, 0, 0], [1, 1, 2]])
    acc = per_class_accuracy(cm)
    assert acc[0].item() == pytest.approx(0.75)
    assert math.isnan(acc[1].item())
    assert acc[2].item() == pytest.approx(0.5)


def test_mask_rate() -> None:
    assert mask_rate(torch.tensor([True, False, False, True])) == 0.5
    assert mask_rate(torch.tensor([1.0, 0.0, 0.0])) == pytest.approx(1 / 3)
    assert math.isnan(mask_rate(torch.tensor([], dtype=torch.bool)))


def test_pseudo_label_accuracy_among_masked_only() -> None:
    pseudo = torch.tensor([0, 1, 2, 2])
    mask = torch.tensor([True, True, False, True])
    truth = torch.tensor([0, 2, 2, 2])  # masked: right, wrong, right; the unmasked one does not count
    assert float(pseudo_label_accuracy(pseudo, mask, truth)) == pytest.approx(2 / 3)
    assert math.isnan(float(pseudo_label_accuracy(pseudo, torch.zeros(4, dtype=torch.bool), truth)))
    unknown = torch.tensor([0, -1, 2, -1])  # truth -1: not known, not counted
    assert float(pseudo_label_accuracy(pseudo, mask, unknown)) == pytest.approx(1.0)


def test_window_means_skip_nan_and_start_over() -> None:
    window = WindowMeans()
    window.add({"loss": torch.tensor(1.0), "acc": torch.tensor(math.nan)})
    window.add({"loss": torch.tensor(3.0), "acc": torch.tensor(0.5)})
    window.add({"loss": torch.tensor(2.0), "only_nan": torch.tensor(math.nan)})
    assert window.means() == {"loss": pytest.approx(2.0), "acc": pytest.approx(0.5)}
    window.add({"loss": torch.tensor(5.0)})
    sums, counts = window.totals()
    assert sums == {"loss": 5.0} and counts == {"loss": 1}
    assert window.means() == {}


def test_agreement() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    b = torch.tensor([[0.6, 0.4], [0.9, 0.1], [0.0, 3.0]])
    assert agreement(a, b) == pytest.approx(1 / 3)
    assert agreement(a, a) == 1.0
