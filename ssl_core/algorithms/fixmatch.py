"""FixMatch (Sohn et al. 2020): confident weak-view pseudo-labels teach the strong view.

L = CE(F(v), y) + lambda_u * (1/B_u) sum_i 1[max p_i >= tau] CE(argmax p_i, F(strong(u_i))),
p_i = softmax(F(weak(u_i))) without gradient.
Options (thresholds.py): `threshold` = fixed | flexmatch | freematch replaces tau by class-wise thresholds
T_{argmax p_i}; `distribution_alignment` aligns p_i (ReMixMatch DA) before thresholding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ssl_core.algorithms.components import joint_forward, masked_cross_entropy
from ssl_core.algorithms.registry import Algorithm, StepOutput, check_param, register_algorithm, require_keys
from ssl_core.algorithms.thresholds import PseudoLabeler, validate_threshold_options


@dataclass(frozen=True)
class FixMatchParams:
    tau: float = 0.95  # confidence threshold: high, so only reliable pseudo-labels teach (paper default)
    lambda_u: float = 1.0  # unlabeled loss weight; 1 works without ramp-up because the mask gates early noise
    threshold: str = "fixed"  # fixed | flexmatch | freematch: class-wise adaptive thresholds (thresholds.py)
    distribution_alignment: bool = False  # ReMixMatch DA of p before thresholding: counters class imbalance
    stats_momentum: float = 0.999  # EMA momentum of the adaptive-threshold / DA statistics (~1000-batch memory)

    def __post_init__(self) -> None:
        check_param("fixmatch", "tau", self.tau, "unit")
        check_param("fixmatch", "lambda_u", self.lambda_u, "non_negative")
        validate_threshold_options("fixmatch", self.threshold, self.distribution_alignment, self.stats_momentum)


@register_algorithm("fixmatch")
class FixMatch(Algorithm):
    description = "confident weak-view pseudo-labels teach the strong view (Sohn et al. 2020)"
    Params = FixMatchParams
    roles = ("primary",)
    needs_unlabeled = True

    def __init__(self, models: Mapping[str, nn.Module], params: Any = None) -> None:
        super().__init__(models, params)
        p = self.params
        self.labeler = PseudoLabeler(p.threshold, p.tau, p.distribution_alignment, p.stats_momentum)

    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput:
        require_keys(labeled, ("video", "label"), "labeled", self.name)
        require_keys(unlabeled, ("weak", "strong"), "unlabeled", self.name)
        logits_lab, logits_weak, logits_strong = joint_forward(
            self.models["primary"], labeled["video"], unlabeled["weak"], unlabeled["strong"]
        )
        loss_sup = F.cross_entropy(logits_lab, labeled["label"])
        targets = self.labeler(logits_weak)
        hard, mask = targets.hard, targets.mask
        loss_unsup = masked_cross_entropy(logits_strong, hard, mask)
        loss = loss_sup + self.params.lambda_u * loss_unsup
        return StepOutput(
            loss=loss,
            metrics={
                "loss/sup_primary": loss_sup.detach(),
                "loss/unsup_primary": loss_unsup.detach(),
                "loss/total": loss.detach(),
                "pseudo/mask_rate_primary": mask.mean(),
                "pseudo/threshold_mean_primary": targets.thresholds.float().mean(),
            },
            pseudo={"primary": (hard, mask.bool())},
            logits_weak={"primary": logits_weak.detach()},
        )

    def state_dict(self) -> dict[str, Any]:
        """Adaptive-threshold / DA statistics; empty with the default fixed threshold and no DA."""
        return {"labeler": self.labeler.state_dict()} if self.labeler.stateful else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not self.labeler.stateful:
            super().load_state_dict(state)
            return
        unknown = set(state) - {"labeler"}
        if unknown:
            raise KeyError(f"{self.name}: unexpected state keys {sorted(unknown)}")
        self.labeler.load_state_dict(state.get("labeler", {}))
