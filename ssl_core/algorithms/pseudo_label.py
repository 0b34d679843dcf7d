"""Pseudo-Label (Lee 2013), online form: the model's own confident weak-view predictions are hard targets.

L = CE(F(v), y) + w(t) * (1/B_u) sum_i 1[max p_i >= T_{y_hat_i}] CE(y_hat_i, F(weak(u_i))),
p_i = softmax(F(weak(u_i))) without gradient, y_hat_i = argmax p_i, and the CE is on the SAME weak-view
logits with gradient (one view, as USB's PseudoLabel; the strong view is unused).
w(t) = lambda_u * exp(-5 (1 - t)^2), t = min(step / rampup_iters, 1): the unlabeled weight ramps up from
~0 (Lee 2013: the weight ramps up from 0), because early predictions are mostly wrong.
The step counter lives in state_dict so the ramp survives a checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_core.algorithms.base import Algorithm, StepOutput, check_param, require_keys
from ssl_core.algorithms.components import masked_cross_entropy, primary_loss_metrics, sigmoid_rampup
from ssl_core.algorithms.registry import register_algorithm
from ssl_core.algorithms.thresholds import PseudoLabelOptions


@dataclass(frozen=True)
class PseudoLabelParams(PseudoLabelOptions):
    tau: float = 0.95  # confidence threshold: only confident self-predictions become targets
    lambda_u: float = 1.0  # maximum unlabeled weight, reached at the end of the ramp
    rampup_iters: int = 400  # steps of the exp(-5(1-t)^2) ramp; self-training on early noise confirms errors

    def __post_init__(self) -> None:
        self.check_pseudo_labels("pseudo_label")
        check_param("pseudo_label", "lambda_u", self.lambda_u, "non_negative")
        check_param("pseudo_label", "rampup_iters", self.rampup_iters, "non_negative")


@register_algorithm("pseudo_label")
class PseudoLabel(Algorithm):
    description = "online self-training on the model's own confident weak-view labels (Lee 2013)"
    Params = PseudoLabelParams
    roles = ("primary",)
    needs_unlabeled = True

    def __init__(self, models: Mapping[str, nn.Module], params: Any = None) -> None:
        super().__init__(models, params)
        self.labeler = self.params.labeler()
        self.step = torch.zeros((), dtype=torch.long)

    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput:
        require_keys(labeled, ("video", "label"), "labeled", self.name)
        require_keys(unlabeled, ("weak",), "unlabeled", self.name)
        video, weak = labeled["video"], unlabeled["weak"]
        if video.shape[1:] != weak.shape[1:]:
            raise ValueError(f"labeled video {tuple(video.shape)} and weak view {tuple(weak.shape)} must match")
        logits_lab, logits_weak = self.models["primary"](torch.cat([video, weak])).split([len(video), len(weak)])
        loss_sup = F.cross_entropy(logits_lab, labeled["label"])
        targets = self.labeler(logits_weak)
        loss_unsup = masked_cross_entropy(logits_weak, targets.hard, targets.mask)
        weight = self.params.lambda_u * sigmoid_rampup(self.step, self.params.rampup_iters)
        self.step += 1
        loss = loss_sup + weight * loss_unsup
        return StepOutput(
            loss=loss,
            metrics={
                **primary_loss_metrics(loss_sup, loss_unsup, loss, targets.mask),
                "pseudo/threshold_mean_primary": targets.thresholds.float().mean(),
                "train/unsup_weight": torch.tensor(weight),
            },
            pseudo={"primary": (targets.hard, targets.mask.bool())},
            logits_weak={"primary": logits_weak.detach()},
        )

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step.clone(), "labeler": self.labeler.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        unknown = set(state) - {"step", "labeler"}
        if unknown:
            raise KeyError(f"{self.name}: unexpected state keys {sorted(unknown)}")
        if "step" in state:
            self.step = torch.as_tensor(state["step"]).detach().clone().long().cpu()
        self.labeler.load_state_dict(state.get("labeler", {}))
