"""CMPL, Cross-Model Pseudo-Labeling (Xu et al., CVPR 2022): each model is taught by the OTHER's labels.

Primary F (e.g. r3d_50) and a lightweight auxiliary A (e.g. r3d_50_w0.25) have different structural
biases; their confident weak-view pseudo-labels are complementary, so each teaches the other:
    L = (Ls^F + Ls^A) + lambda_u (Lu^F + Lu^A)
    Lu^F = (1/B_u) sum_i 1[max p_i^A >= tau] CE(argmax p_i^A, F(strong(u_i)))   (and A <-> F for Lu^A)
Only the primary is deployed.
Options (thresholds.py): `threshold` = fixed | flexmatch | freematch | softmatch and `distribution_alignment`;
each model's pseudo-labels get their OWN policy instance (its statistics describe that model's predictions).
The recipe options (components.RecipeParams): supervised warm-up and a ramp of the unlabeled weight,
pseudo-labels from each model's EMA copy, label smoothing and MixUp on the labeled term (the same mixed
batch for both models). Beyond the paper, the auxiliary may read the temporal-gradient view of the clips
(`model.auxiliary: small3d_w0.5+tg`, ssl_core.models.registry), so the two models' mistakes differ more.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
from ssl_core.algorithms.thresholds import PseudoLabelOptions, PseudoTargets


@dataclass(frozen=True)
class CMPLParams(PseudoLabelOptions, RecipeParams):
    tau: float = 0.95  # confidence threshold for the OTHER model's pseudo-labels (paper: FixMatch's 0.95)
    lambda_u: float = 1.0  # weight of both cross-model unlabeled losses (paper: 1)

    def __post_init__(self) -> None:
        self.check_pseudo_labels("cmpl")
        check_param("cmpl", "lambda_u", self.lambda_u, "non_negative")
        self.check_recipe("cmpl")


@register_algorithm("cmpl")
class CMPL(Algorithm):
    description = "cross-model pseudo-labeling: primary and auxiliary teach each other (Xu et al. 2022)"
    Params = CMPLParams
    roles = ("primary", "auxiliary")
    needs_unlabeled = True

    def __init__(self, models: Mapping[str, nn.Module], params: Any = None) -> None:
        super().__init__(models, params)
        # Keyed by the role that PRODUCES the pseudo-labels.
        self.labelers = {role: self.params.labeler() for role in self.roles}

    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput:
        require_keys(labeled, ("video", "label"), "labeled", self.name)
        require_keys(unlabeled, ("weak", "strong"), "unlabeled", self.name)
        p = self.params
        batch = mix_labeled(labeled["video"], labeled["label"], p.labeled_mixup)
        ramp = unlabeled_ramp(self.steps_done, p.unsup_warmup, p.unsup_rampup)
        if ramp == 0.0:
            return warmup_step(self.models, batch, p.label_smoothing)
        sup: dict[str, Tensor] = {}
        weak: dict[str, Tensor] = {}
        strong: dict[str, Tensor] = {}
        targets: dict[str, PseudoTargets] = {}  # role -> the targets that role PRODUCED
        for role in self.roles:
            teacher = self.ema.get(role) if p.ema_teacher else None
            logits_lab, weak[role], strong[role] = pseudo_label_forward(
                self.models[role], teacher, batch.video, unlabeled["weak"], unlabeled["strong"],
                weak_no_grad=p.weak_no_grad,
            )
            sup[role] = labeled_loss(logits_lab, batch, p.label_smoothing)
            targets[role] = self.labelers[role](weak[role])

        teacher_of = {"primary": "auxiliary", "auxiliary": "primary"}
        unsup = {role: masked_cross_entropy(strong[role], targets[teacher_of[role]].hard,
                                            targets[teacher_of[role]].mask) for role in self.roles}
        weight = p.lambda_u * ramp
        loss = sum(sup.values()) + weight * sum(unsup.values())

        metrics: dict[str, Tensor] = {"loss/total": loss.detach(), "unsup_weight": loss.new_tensor(weight)}
        pseudo: dict[str, tuple[Tensor, Tensor]] = {}
        for role in self.roles:
            taught_by = targets[teacher_of[role]]
            metrics[f"loss/sup_{role}"] = sup[role].detach()
            metrics[f"loss/unsup_{role}"] = unsup[role].detach()
            # Rate (mean weight) of the targets that taught this role (i.e. the other model's confident fraction).
            metrics[f"pseudo/mask_rate_{role}"] = taught_by.mask.mean()
            metrics[f"pseudo/threshold_mean_{role}"] = taught_by.thresholds.float().mean()
            pseudo[role] = (taught_by.hard, taught_by.confident)
        agree = weak["primary"].argmax(-1) == weak["auxiliary"].argmax(-1)
        metrics["pseudo/agreement"] = agree.float().mean()
        return StepOutput(
            loss=loss,
            metrics=metrics,
            pseudo=pseudo,
            logits_weak={role: logits.detach() for role, logits in weak.items()},
        )

    def state_dict(self) -> dict[str, Any]:
        """Per-producer adaptive-threshold / DA statistics; empty with the default fixed threshold and no DA."""
        if not self.labelers["primary"].stateful:
            return {}
        return {f"labeler_{role}": labeler.state_dict() for role, labeler in self.labelers.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not self.labelers["primary"].stateful:
            super().load_state_dict(state)
            return
        unknown = set(state) - {f"labeler_{role}" for role in self.roles}
        if unknown:
            raise KeyError(f"{self.name}: unexpected state keys {sorted(unknown)}")
        for role, labeler in self.labelers.items():
            labeler.load_state_dict(state.get(f"labeler_{role}", {}))
