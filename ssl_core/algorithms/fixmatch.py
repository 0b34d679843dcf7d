"""FixMatch (Sohn et al. 2020): confident weak-view pseudo-labels teach the strong view.

L = CE(F(v), y) + lambda_u * (1/B_u) sum_i w_i CE(argmax p_i, F(strong(u_i))),
p_i = softmax(F(weak(u_i))) without gradient, w_i = 1[max p_i >= tau] (FixMatch).
Options (thresholds.py): `threshold` = fixed | flexmatch | freematch | softmatch replaces the fixed cut by
class-wise thresholds or SoftMatch's Gaussian weights; `distribution_alignment` aligns p_i (ReMixMatch DA)
before thresholding. The recipe options (components.RecipeParams): supervised warm-up and a ramp of the
unlabeled weight, pseudo-labels from the EMA model, label smoothing and MixUp on the labeled term.
`companion` (LTG, Xiao et al. 2022): a second model (`model.auxiliary`, e.g. `small3d_w0.5+tg` reading the
temporal-gradient view) trains beside the primary; the pseudo-label is argmax of the AVERAGE of both models'
weak-view probabilities and teaches both strong views. Only the primary is deployed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ssl_core.algorithms.base import Algorithm, StepOutput, check_param, require_keys
from ssl_core.algorithms.components import (
    RecipeParams,
    labeled_loss,
    masked_cross_entropy,
    mix_labeled,
    pseudo_label_forward,
    unlabeled_ramp,
    warmup_step,
)
from ssl_core.algorithms.registry import register_algorithm
from ssl_core.algorithms.thresholds import LabelerState, PseudoLabelOptions


@dataclass(frozen=True)
class FixMatchParams(PseudoLabelOptions, RecipeParams):
    tau: float = 0.95  # confidence threshold: high, so only reliable pseudo-labels teach (paper default)
    lambda_u: float = 1.0  # unlabeled loss weight; 1 works without ramp-up because the mask gates early noise
    # Train model.auxiliary as a companion and label with both models' averaged weak predictions (LTG).
    companion: bool = False

    def __post_init__(self) -> None:
        self.check_pseudo_labels("fixmatch")
        check_param("fixmatch", "lambda_u", self.lambda_u, "non_negative")
        self.check_recipe("fixmatch")


@register_algorithm("fixmatch")
class FixMatch(LabelerState, Algorithm):
    description = "confident weak-view pseudo-labels teach the strong view (Sohn et al. 2020)"
    Params = FixMatchParams
    roles = ("primary",)
    needs_unlabeled = True

    def __init__(self, models: Mapping[str, nn.Module], params: Any = None) -> None:
        super().__init__(models, params)
        self.labeler = self.params.labeler()

    @classmethod
    def roles_for(cls, params: Any) -> tuple[str, ...]:
        return ("primary", "auxiliary") if params.companion else cls.roles

    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput:
        require_keys(labeled, ("video", "label"), "labeled", self.name)
        require_keys(unlabeled, ("weak", "strong"), "unlabeled", self.name)
        p = self.params
        roles = tuple(self.models)
        batch = mix_labeled(labeled["video"], labeled["label"], p.labeled_mixup)
        ramp = unlabeled_ramp(self.steps_done, p.unsup_warmup, p.unsup_rampup)
        if ramp == 0.0:
            return warmup_step(self.models, batch, p.label_smoothing)
        sup: dict[str, Tensor] = {}
        weak: dict[str, Tensor] = {}
        strong: dict[str, Tensor] = {}
        for role in roles:
            teacher = self.ema.get(role) if p.ema_teacher else None
            logits_lab, weak[role], strong[role] = pseudo_label_forward(
                self.models[role], teacher, batch.video, unlabeled["weak"], unlabeled["strong"],
                weak_no_grad=p.weak_no_grad,
            )
            sup[role] = labeled_loss(logits_lab, batch, p.label_smoothing)
        if len(roles) == 1:
            labeling_logits = weak["primary"]
        else:  # LTG: the averaged probabilities, as logits whose softmax gives them back
            with torch.no_grad():
                mean_probs = torch.stack([w.float().softmax(dim=-1) for w in weak.values()]).mean(dim=0)
                labeling_logits = mean_probs.clamp_min(1e-12).log()
        targets = self.labeler(labeling_logits)
        unsup = {role: masked_cross_entropy(strong[role], targets.hard, targets.mask) for role in roles}
        weight = p.lambda_u * ramp
        loss = sum(sup.values()) + weight * sum(unsup.values())
        metrics: dict[str, Tensor] = {"loss/total": loss.detach(), "unsup_weight": loss.new_tensor(weight)}
        for role in roles:
            metrics[f"loss/sup_{role}"] = sup[role].detach()
            metrics[f"loss/unsup_{role}"] = unsup[role].detach()
            metrics[f"pseudo/mask_rate_{role}"] = targets.mask.mean()
            metrics[f"pseudo/threshold_mean_{role}"] = targets.thresholds.float().mean()
        if len(roles) > 1:
            metrics["pseudo/agreement"] = (weak["primary"].argmax(-1) == weak["auxiliary"].argmax(-1)).float().mean()
        return StepOutput(
            loss=loss,
            metrics=metrics,
            pseudo={role: (targets.hard, targets.confident) for role in roles},
            logits_weak={role: logits.detach() for role, logits in weak.items()},
        )
