"""CMPL, Cross-Model Pseudo-Labeling (Xu et al., CVPR 2022): each model is taught by the OTHER's labels.

Primary F (e.g. r3d_50) and a lightweight auxiliary A (e.g. r3d_50_w0.25) have different structural
biases; their confident weak-view pseudo-labels are complementary, so each teaches the other:
    L = (Ls^F + Ls^A) + lambda_u (Lu^F + Lu^A)
    Lu^F = (1/B_u) sum_i 1[max p_i^A >= tau] CE(argmax p_i^A, F(strong(u_i)))   (and A <-> F for Lu^A)
Only the primary is deployed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from ssl_core.algorithms.components import confidence_mask, joint_forward, masked_cross_entropy, pseudo_label
from ssl_core.algorithms.registry import Algorithm, StepOutput, register_algorithm, require_keys


@dataclass(frozen=True)
class CMPLParams:
    tau: float = 0.95  # confidence threshold for the OTHER model's pseudo-labels (paper: FixMatch's 0.95)
    lambda_u: float = 1.0  # weight of both cross-model unlabeled losses (paper: 1)

    def __post_init__(self) -> None:
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"cmpl.tau must be in [0, 1], got {self.tau}")
        if self.lambda_u < 0:
            raise ValueError(f"cmpl.lambda_u must be >= 0, got {self.lambda_u}")


@register_algorithm("cmpl")
class CMPL(Algorithm):
    description = "cross-model pseudo-labeling: primary and auxiliary teach each other (Xu et al. 2022)"
    Params = CMPLParams
    roles = ("primary", "auxiliary")
    needs_unlabeled = True

    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput:
        require_keys(labeled, ("video", "label"), "labeled", self.name)
        require_keys(unlabeled, ("weak", "strong"), "unlabeled", self.name)
        sup: dict[str, Tensor] = {}
        weak: dict[str, Tensor] = {}
        strong: dict[str, Tensor] = {}
        labels: dict[str, tuple[Tensor, Tensor]] = {}  # role -> (hard, float mask) that role PRODUCED
        for role in self.roles:
            logits_lab, weak[role], strong[role] = joint_forward(
                self.models[role], labeled["video"], unlabeled["weak"], unlabeled["strong"]
            )
            sup[role] = F.cross_entropy(logits_lab, labeled["label"])
            max_probs, hard = pseudo_label(weak[role])
            labels[role] = (hard, confidence_mask(max_probs, self.params.tau))

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
            pseudo[role] = (hard, mask.bool())
        agree = weak["primary"].argmax(-1) == weak["auxiliary"].argmax(-1)
        metrics["pseudo/agreement"] = agree.float().mean()
        return StepOutput(
            loss=loss,
            metrics=metrics,
            pseudo=pseudo,
            logits_weak={role: logits.detach() for role, logits in weak.items()},
        )
