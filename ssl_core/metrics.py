"""Evaluation and pseudo-label metrics: top-k, confusion / per-class accuracy, mask rate, quality, agreement.

Pure tensor functions; callers sum counts across batches (and workers) before dividing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor


def topk_correct(
    logits: Tensor,  # (B, C)
    labels: Tensor,  # (B,) int64
    ks: tuple[int, ...] = (1, 5),
) -> dict[int, int]:  # requested k -> number of samples whose label is in the top min(k, C)
    """Counts, not rates, so batches and workers can be summed exactly."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"topk_correct: logits (B, C) and labels (B,) expected, got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    num_classes = logits.shape[1]
    top = logits.topk(min(max(ks), num_classes), dim=1).indices  # (B, k_max), best first
    hits = top == labels.unsqueeze(1)
    return {k: int(hits[:, : min(k, num_classes)].any(dim=1).sum()) for k in ks}


def confusion_matrix(
    preds: Tensor,  # (N,) int64
    labels: Tensor,  # (N,) int64
    num_classes: int,
) -> Tensor:  # (C, C) int64, rows = true class, columns = predicted class
    if preds.shape != labels.shape or preds.ndim != 1:
        raise ValueError(f"confusion_matrix: preds {tuple(preds.shape)} and labels {tuple(labels.shape)} "
                         "must be equal 1-D shapes")
    for name, values in (("preds", preds), ("labels", labels)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} outside [0, {num_classes}): "
                             f"min {int(values.min())}, max {int(values.max())}")
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(confusion: Tensor) -> Tensor:  # (C, C) -> (C,) float, nan for classes never seen
    totals = confusion.sum(dim=1).double()
    correct = confusion.diagonal().double()
    return torch.where(totals > 0, correct / totals.clamp(min=1), torch.full_like(totals, math.nan))


def mask_rate(mask: Tensor) -> float:
    """Pseudo-label quantity: fraction of the unlabeled batch that passed the threshold (nan if empty)."""
    return float(mask.float().mean()) if mask.numel() else math.nan


def pseudo_label_accuracy(
    pseudo: Tensor,  # (B,) int64 hard pseudo-labels
    mask: Tensor,  # (B,) bool or {0, 1}
    truth: Tensor,  # (B,) int64 true labels, -1 unknown (benchmarks only; never reach a loss)
) -> Tensor:
    """Pseudo-label quality: among masked samples with a known truth, the fraction equal to it; nan if none.
    A 0-d tensor on the pseudo-labels' device (computed without waiting for it)."""
    if not pseudo.shape == mask.shape == truth.shape:
        raise ValueError(f"pseudo_label_accuracy: shapes differ: pseudo {tuple(pseudo.shape)}, "
                         f"mask {tuple(mask.shape)}, truth {tuple(truth.shape)}")
    truth = truth.to(pseudo.device)
    selected = mask.to(pseudo.device).bool() & (truth >= 0)
    return ((pseudo == truth) & selected).sum().float() / selected.sum().float()  # 0 / 0 = nan


def agreement(logits_a: Tensor, logits_b: Tensor) -> float:  # (B, C) each
    """Fraction of samples where both argmaxes agree (CMPL's cross-model agreement); nan if empty."""
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"agreement: shapes differ, {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}")
    if logits_a.shape[0] == 0:
        return math.nan
    return float((logits_a.argmax(-1) == logits_b.argmax(-1)).float().mean())


class WindowMeans:
    """Per-key means of step metrics (0-d tensors) over a logging window. The sums stay on the metrics' device,
    so a GPU step never waits for a scalar to reach the host; `means()` brings them over, once per window. A
    nan (e.g. pseudo-label accuracy with nothing above tau) counts as no sample, not as a value."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}

    def add(self, metrics: Mapping[str, Tensor]) -> None:
        for key, value in metrics.items():
            value = value.detach().float()
            seen = ~value.isnan()
            self.sums[key] = self.sums.get(key, 0.0) + torch.where(seen, value, 0.0)
            self.counts[key] = self.counts.get(key, 0) + seen.int()

    def totals(self) -> tuple[dict[str, float], dict[str, int]]:
        """(sums, counts) of the window so far, as host numbers; the window starts over."""
        keys = sorted(self.sums)
        if not keys:
            return {}, {}
        # An algorithm may make a metric on the CPU beside others on the GPU: one device, then one transfer.
        device = self.sums[keys[0]].device
        sums = torch.stack([self.sums[k].to(device) for k in keys]).tolist()
        counts = torch.stack([self.counts[k].to(device) for k in keys]).tolist()
        self.sums, self.counts = {}, {}
        return dict(zip(keys, sums, strict=True)), dict(zip(keys, counts, strict=True))

    def means(self) -> dict[str, float]:
        """The window's means of every key seen at least once (as a number); the window starts over."""
        sums, counts = self.totals()
        return {k: sums[k] / counts[k] for k in sums if counts[k]}
