"""CMPL, Cross-Model Pseudo-Labeling (Xu et al., CVPR 2022): each model is taught by the OTHER's labels.

Primary F (e.g. r3d_50) and a lightweight auxiliary A (e.g. r3d_50_w0.25) have different structural
biases; their confident weak-view pseudo-labels are complementary, so each teaches the other:
    L = (Ls^F + Ls^A) + lambda_u (Lu^F + Lu^A)
    Lu^F = (1/B_u) sum_i 1[max p_i^A >= tau] CE(argmax p_i^A, F(strong(u_i)))   (and A <-> F for Lu^A)
Only the primary is deployed.
Options (thresholds.py): `threshold` = fixed | flexmatch | freematch and `distribution_alignment`; each
model's pseudo-labels get their OWN policy instance (its statistics describe that model's predictions).
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
class CMPLParams:
    tau: float = 0.95  # confidence threshold for the OTHER model's pseudo-labels (paper: FixMatch's 0.95)
    lambda_u: float = 1.0  # weight of both cross-model unlabeled losses (paper: 1)
    threshold: str = "fixed"  # fixed | flexmatch | freematch: class-wise adaptive thresholds (thresholds.py)
    distribution_alignment: bool = False  # ReMixMatch DA of p before thresholding: counters class imbalance
    stats_momentum: float = 0.999  # EMA momentum of the adaptive-threshold / DA statistics (~1000-batch memory)

    def __post_init__(self) -> None:
        check_param("cmpl", "tau", self.tau, "unit")
        check_param("cmpl", "lambda_u", self.lambda_u, "non_negative")
        validate_threshold_options("cmpl", self.threshold, self.distribution_alignment, self.stats_momentum)


@register_algorithm("cmpl")
class CMPL(Algorithm):
    description = "cross-model pseudo-labeling: primary and auxiliary teach each other (Xu et al. 2022)"
    Params = CMPLParams
    roles = ("primary", "auxiliary")
    needs_unlabeled = True

    def __init__(self, models: Mapping[str, nn.Module], params: Any = None) -> None:
        super().__init__(models, params)
        p = self.params
        # Keyed by the role that PRODUCES the pseudo-labels.
        self.labelers = {
            role: PseudoLabeler(p.threshold, p.tau, p.distribution_alignment, p.stats_momentum) for role in self.roles
        }

    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput:
        require_keys(labeled, ("video", "label"), "labeled", self.name)
        require_keys(unlabeled, ("weak", "strong"), "unlabeled", self.name)
        sup: dict[str, Tensor] = {}
        weak: dict[str, Tensor] = {}
        strong: dict[str, Tensor] = {}
        labels: dict[str, tuple[Tensor, Tensor]] = {}  # role -> (hard, float mask) that role PRODUCED
        thresholds: dict[str, Tensor] = {}  # role -> (C,) thresholds applied to that role's predictions
        for role in self.roles:
            logits_lab, weak[role], strong[role] = joint_forward(
                self.models[role], labeled["video"], unlabeled["weak"], unlabeled["strong"]
            )
            sup[role] = F.cross_entropy(logits_lab, labeled["label"])
            targets = self.labelers[role](weak[role])
            labels[role] = (targets.hard, targets.mask)
            thresholds[role] = targets.thresholds

        teacher_of = {"primary": "auxiliary", "auxiliary": "primary"}
        unsup = {role: masked_cross_entropy(strong[role], *labels[teacher_of[role]]) for role in self.roles}
        loss = sum(sup.values()) + self.params.lambda_u * sum(unsup.values())

        metrics: dict[str, Tensor] = {"loss/total": loss.detach()}
        pseudo: dict[str, tuple[Tensor, Tensor]] = {}
        for role in self.roles:
            hard, mask = labels[teacher_of[role]]
            metrics[f"loss/sup_{role}"] = sup[role].detach()
            metrics[f"loss/unsup_{role}"] = unsup[role].detach()
            # Rate of the targets that taught this role (i.e. the other model's confident fraction).
            metrics[f"pseudo/mask_rate_{role}"] = mask.mean()
            metrics[f"pseudo/threshold_mean_{role}"] = thresholds[teacher_of[role]].float().mean()
            pseudo[role] = (hard, mask.bool())
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
