"""Knowledge distillation from a frozen teacher (any registered / MLflow model) into the primary.

soft (Hinton 2015), P^tau = softmax(logits / tau):
    L = mean_lab H(y, P_S) + lambda_kd * tau^2 * mean_all KL(P_T^tau || P_S^tau)
hard (DeiT), y_t = argmax teacher logits:
    L = 1/2 mean_lab H(y, P_S) + 1/2 mean_all H(y_t, P_S)
mean_lab averages over the B_l labeled clips, mean_all over the B_l + B_u labeled and unlabeled clips.
The true-label term exists only on labeled clips; the teacher term covers labeled and unlabeled clips (the
weak view: the teacher's best guess, the student sees the same input). Each term is a mean over the clips it
covers. The teacher runs under torch.no_grad() (the worker also froze it and put it in eval mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_core.algorithms.base import Algorithm, StepOutput, check_param, require_keys
from ssl_core.algorithms.components import kd_loss
from ssl_core.algorithms.registry import register_algorithm

MODES = ("soft", "hard")


def soft_distillation_loss(
    student_labeled: Tensor,  # (B_l, C)
    labels: Tensor,  # (B_l,) int64
    student_all: Tensor,  # (N, C): the student's logits on every clip the teacher labels (labeled + unlabeled)
    teacher_all: Tensor,  # (N, C): the teacher's logits on the same clips; receive no gradient
    temperature: float,
    lambda_kd: float,
) -> Tensor:  # scalar
    """H(y, P_S) (mean over labeled) + lambda_kd * tau^2 * KL(P_T^tau || P_S^tau) (mean over all N clips)."""
    return F.cross_entropy(student_labeled, labels) + lambda_kd * kd_loss(student_all, teacher_all, temperature)


def hard_distillation_loss(
    student_labeled: Tensor,  # (B_l, C)
    labels: Tensor,  # (B_l,) int64
    student_all: Tensor,  # (N, C)
    teacher_all: Tensor,  # (N, C); only its argmax is used
) -> Tensor:  # scalar
    """DeiT: 1/2 H(y, P_S) (mean over labeled) + 1/2 H(argmax teacher, P_S) (mean over all N clips)."""
    teacher_labels = teacher_all.detach().argmax(dim=-1)
    return 0.5 * F.cross_entropy(student_labeled, labels) + 0.5 * F.cross_entropy(student_all, teacher_labels)


@dataclass(frozen=True)
class DistillParams:
    mode: str = "soft"  # "soft": Hinton KD on tempered distributions; "hard": DeiT's argmax-label distillation
    temperature: float = 4.0  # soft mode: tau > 1 exposes the teacher's "dark knowledge" (class similarities);
    # 4 is the common CIFAR / ImageNet choice; the tau^2 factor keeps the gradient scale independent of tau
    lambda_kd: float = 1.0  # soft mode: weight of the KD term against the true-label CE (hard mode is fixed 1/2, 1/2)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"distill.mode must be one of {list(MODES)}, got {self.mode!r}")
        check_param("distill", "temperature", self.temperature, "positive")
        check_param("distill", "lambda_kd", self.lambda_kd, "non_negative")


@register_algorithm("distill")
class Distill(Algorithm):
    description = "knowledge distillation from a frozen teacher, soft (Hinton 2015) or hard-label (DeiT)"
    Params = DistillParams
    roles = ("primary", "teacher")
    frozen_roles = ("teacher",)
    needs_unlabeled = True

    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput:
        require_keys(labeled, ("video", "label"), "labeled", self.name)
        video = labeled["video"]
        if unlabeled is not None:  # without unlabeled clips, distil on the labeled ones only
            require_keys(unlabeled, ("weak",), "unlabeled", self.name)
            video = torch.cat([video, unlabeled["weak"]])
        b_l = labeled["video"].shape[0]
        with torch.no_grad():
            teacher_all = self.models["teacher"](video)
        student_all = self.models["primary"](video)
        student_labeled = student_all[:b_l]
        p = self.params
        loss_sup = F.cross_entropy(student_labeled, labeled["label"])
        if p.mode == "soft":
            loss = soft_distillation_loss(student_labeled, labeled["label"], student_all, teacher_all,
                                          p.temperature, p.lambda_kd)
            loss_kd = kd_loss(student_all.detach(), teacher_all, p.temperature)
        else:
            loss = hard_distillation_loss(student_labeled, labeled["label"], student_all, teacher_all)
            loss_kd = F.cross_entropy(student_all.detach(), teacher_all.argmax(dim=-1))

        teacher_weak, student_weak = teacher_all[b_l:], student_all[b_l:].detach()
        hard = teacher_weak.argmax(dim=-1)
        metrics = {
            "loss/sup_primary": loss_sup.detach(),
            "loss/kd_primary": loss_kd.detach(),  # soft: tau^2 KL; hard: CE against the teacher's argmax
            "loss/total": loss.detach(),
            "pseudo/mask_rate_primary": loss_sup.new_ones(()).detach(),  # every teacher label teaches
            "distill/agreement": (student_all.detach().argmax(-1) == teacher_all.argmax(-1)).float().mean(),
        }
        out = StepOutput(loss=loss, metrics=metrics)
        if unlabeled is not None:
            out.pseudo = {"primary": (hard, torch.ones_like(hard, dtype=torch.bool))}
            out.logits_weak = {"primary": student_weak, "teacher": teacher_weak}
        return out
