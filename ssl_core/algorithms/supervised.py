"""Supervised baseline: cross-entropy on labeled clips only; every SSL result is reported next to it.

The labeled-term regularisation of the SSL recipe (label smoothing, labeled MixUp) applies here too, so
the baseline is as strong as the recipe's labeled term and a gain measured against it is the unlabeled data's.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ssl_core.algorithms.base import Algorithm, StepOutput, check_param, require_keys
from ssl_core.algorithms.components import labeled_loss, mix_labeled
from ssl_core.algorithms.registry import register_algorithm


@dataclass(frozen=True)
class SupervisedParams:
    label_smoothing: float = 0.0  # as RecipeParams: against memorising a handful of labeled clips
    labeled_mixup: float = 0.0  # MixUp alpha on the labeled batch; 0: off

    def __post_init__(self) -> None:
        check_param("supervised", "label_smoothing", self.label_smoothing, "unit")
        check_param("supervised", "labeled_mixup", self.labeled_mixup, "non_negative")


@register_algorithm("supervised")
class Supervised(Algorithm):
    description = "labeled clips only: L = CE(F(v), y); the baseline for every SSL result"
    Params = SupervisedParams
    roles = ("primary",)
    needs_unlabeled = False

    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput:
        require_keys(labeled, ("video", "label"), "labeled", self.name)
        batch = mix_labeled(labeled["video"], labeled["label"], self.params.labeled_mixup)
        loss = labeled_loss(self.models["primary"](batch.video), batch, self.params.label_smoothing)
        return StepOutput(loss=loss, metrics={"loss/sup_primary": loss.detach(), "loss/total": loss.detach()})
