"""FixMatch (Sohn et al. 2020): confident weak-view pseudo-labels teach the strong view.

L = CE(F(v), y) + lambda_u * (1/B_u) sum_i 1[max p_i >= tau] CE(argmax p_i, F(strong(u_i))),
p_i = softmax(F(weak(u_i))) without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ssl_core.algorithms.components import confidence_mask, joint_forward, masked_cross_entropy, pseudo_label
from ssl_core.algorithms.registry import Algorithm, StepOutput, register_algorithm, require_keys


@dataclass(frozen=True)
class FixMatchParams:
    tau: float = 0.95  # confidence threshold: high, so only reliable pseudo-labels teach (paper default)
    lambda_u: float = 1.0  # unlabeled loss weight; 1 works without ramp-up because the mask gates early noise

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"fixmatch.tau must be in [0, 1], got {self.tau}")
        if self.lambda_u < 0:
            raise ValueError(f"fixmatch.lambda_u must be >= 0, got {self.lambda_u}")


@register_algorithm("fixmatch")
class FixMatch(Algorithm):
    description = "confident weak-view pseudo-labels teach the strong view (Sohn et al. 2020)"
    Params = FixMatchParams
    roles = ("primary",)
    needs_unlabeled = True

    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput:
        require_keys(labeled, ("video", "label"), "labeled", self.name)
        require_keys(unlabeled, ("weak", "strong"), "unlabeled", self.name)
        logits_lab, logits_weak, logits_strong = joint_forward(
            self.models["primary"], labeled["video"], unlabeled["weak"], unlabeled["strong"]
        )
        loss_sup = F.cross_entropy(logits_lab, labeled["label"])
        max_probs, hard = pseudo_label(logits_weak)
        mask = confidence_mask(max_probs, self.params.tau)
        loss_unsup = masked_cross_entropy(logits_strong, hard, mask)
        loss = loss_sup + self.params.lambda_u * loss_unsup
        return StepOutput(
            loss=loss,
            metrics={
                "loss/sup_primary": loss_sup.detach(),
                "loss/unsup_primary": loss_unsup.detach(),
                "loss/total": loss.detach(),
                "pseudo/mask_rate_primary": mask.mean(),
            },
            pseudo={"primary": (hard, mask.bool())},
            logits_weak={"primary": logits_weak.detach()},
        )
