"""Multi-clip evaluation: average the softmax over N uniformly spaced clips per video.

Counts (confusion matrix, top-5 hits) are returned rather than ratios so that distributed workers can sum
them before dividing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ssl_core.data.transforms import AugmentConfig, eval_view
from ssl_core.metrics import confusion_matrix, per_class_accuracy, topk_correct


@torch.no_grad()
def video_probs(
    model: nn.Module,
    clips: Tensor,  # (B, N, T, H, W, 3) uint8
    aug: AugmentConfig,
    device: torch.device,
) -> Tensor:  # (B, num_classes) float, softmax averaged over the N clips
    b, n = clips.shape[:2]
    video = eval_view(clips.flatten(0, 1).to(device), aug)
    probs = model(video).float().softmax(dim=-1)
    return probs.view(b, n, -1).mean(dim=1)


class PreciseBN:
    """Precise BatchNorm statistics before evaluation (train.precise_bn_batches; LTG, SVFormer): the running
    means / variances of the evaluated models are recomputed as a plain average over the last N training
    batches' weak views, instead of the momentum average that still remembers older weights (and, for an EMA
    copy, an average of the student's statistics)."""

    def __init__(self, num_batches: int) -> None:
        self.batches: deque[Tensor] = deque(maxlen=max(1, num_batches))
        self.enabled = num_batches > 0

    def remember(self, labeled: Mapping[str, Tensor], unlabeled: Mapping[str, Tensor] | None) -> None:
        """Keep this step's model inputs (labeled clips + weak unlabeled views) on the CPU."""
        if not self.enabled:
            return
        views = [labeled["video"]] + ([unlabeled["weak"]] if unlabeled is not None else [])
        self.batches.append(torch.cat([v.detach() for v in views]).cpu())

    @torch.no_grad()
    def apply(self, models: Mapping[str, nn.Module], device: torch.device) -> None:
        if not self.enabled or not self.batches:
            return
        for model in models.values():
            # torch's own recomputation: resets the statistics, averages over the batches (momentum None).
            torch.optim.swa_utils.update_bn((b.to(device) for b in self.batches), model, device=None)


@dataclass
class EvalCounts:
    confusion: Tensor  # (C, C) int64, rows = true class
    top5: Tensor  # () int64

    @classmethod
    def zeros(cls, num_classes: int) -> EvalCounts:
        return cls(torch.zeros(num_classes, num_classes, dtype=torch.long), torch.zeros((), dtype=torch.long))

    def add(self, probs: Tensor, labels: Tensor) -> None:
        probs, labels = probs.cpu(), labels.cpu()
        self.confusion += confusion_matrix(probs.argmax(dim=-1), labels, self.confusion.shape[0])
        self.top5 += topk_correct(probs, labels, ks=(5,))[5]

    def summary(self) -> dict[str, float]:
        total = int(self.confusion.sum())
        if total == 0:
            return {"top1": float("nan"), "top5": float("nan")}
        return {"top1": float(self.confusion.trace()) / total, "top5": float(self.top5) / total}

    def per_class(self) -> Tensor:  # (C,) float, nan for classes without test videos
        return per_class_accuracy(self.confusion)
