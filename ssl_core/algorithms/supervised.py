"""Supervised baseline: cross-entropy on labeled clips only; every SSL result is reported next to it."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ssl_core.algorithms.registry import Algorithm, StepOutput, register_algorithm, require_keys


@dataclass(frozen=True)
class SupervisedParams:
    """No hyper-parameters: same data and steps as the SSL runs, labeled clips only."""


@register_algorithm("supervised")
class Supervised(Algorithm):
    description = "labeled clips only: L = CE(F(v), y); the baseline for every SSL result"
    Params = SupervisedParams
    roles = ("primary",)
    needs_unlabeled = False

    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput:
        require_keys(labeled, ("video", "label"), "labeled", self.name)
        loss = F.cross_entropy(self.models["primary"](labeled["video"]), labeled["label"])
        return StepOutput(loss=loss, metrics={"loss/sup_primary": loss.detach(), "loss/total": loss.detach()})
