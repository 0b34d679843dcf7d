"""Noisy Student (Xie et al. 2020), one round's training step: an un-noised frozen teacher labels, a noised
student learns.

    p_i = softmax(T(weak(u_i)))                          (frozen teacher, no gradient, weak = un-noised view)
    m_i = 1[max p_i >= tau]                              (confidence filter; tau = 0 keeps every clip)
    hard: L_u = (1/B_u) sum_i m_i CE(argmax p_i, S(strong(u_i)))
    soft: L_u = (1/B_u) sum_i m_i H(p_i, S(strong(u_i)))
    L = CE(S(v), y) + lambda_u * L_u

The student's noise: RandAugment on the strong view (input noise) plus its own dropout / stochastic depth,
which the worker builds into the model (model.dropout, model.stochastic_depth; see
ssl_core/models/stochastic_depth.py). The paper's "equal-or-larger student" is the user's model choice:
nothing here checks sizes. Rounds (student becomes the next teacher) are workflows/noisy_student.py, whose
students use `noisy_student_offline` below: the teacher labels the set once, the student learns stored targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ssl_core.algorithms.base import Algorithm, StepOutput, check_param, require_keys
from ssl_core.algorithms.components import confidence_mask, masked_cross_entropy, primary_loss_metrics, pseudo_label
from ssl_core.algorithms.registry import register_algorithm


def soft_cross_entropy(
    logits: Tensor,  # (B, C)
    target_probs: Tensor,  # (B, C) rows summing to 1; receive no gradient
    mask: Tensor,  # (B,) float or bool
) -> Tensor:  # scalar
    """sum_i mask_i * H(q_i, softmax(logits_i)) / B, H(q, p) = -sum_c q_c log p_c; normalised by the WHOLE
    batch as masked_cross_entropy (FixMatch). Shared with meta_pseudo_labels (UDA consistency)."""
    if target_probs.shape != logits.shape or mask.shape != logits.shape[:1]:
        raise ValueError(
            f"soft_cross_entropy: logits {tuple(logits.shape)}, target_probs {tuple(target_probs.shape)} and "
            f"mask {tuple(mask.shape)} must agree"
        )
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    ce = -(target_probs.detach() * F.log_softmax(logits, dim=-1)).sum(dim=-1)
    return (ce * mask.to(ce.dtype)).sum() / logits.shape[0]


@dataclass(frozen=True)
class NoisyStudentParams:
    soft: bool = False  # soft teacher distributions instead of argmax labels (paper: both work, soft slightly
    # better out of domain); hard is the default, as for the other pseudo-labeling algorithms here
    tau: float = 0.0  # confidence filter on the teacher's max probability; 0 keeps every clip (the paper filters
    # only weakly, 0.3 on ImageNet, since the student's noise already tolerates wrong labels)
    lambda_u: float = 1.0  # unlabeled loss weight (paper: labeled and pseudo-labeled data weigh the same)

    def __post_init__(self) -> None:
        check_param("noisy_student", "tau", self.tau, "unit")
        check_param("noisy_student", "lambda_u", self.lambda_u, "non_negative")


def student_step(
    student: torch.nn.Module,
    labeled: dict[str, Tensor],
    strong: Tensor,  # (B_u, ...) the noised view the student learns
    teacher_probs: Tensor,  # (B_u, C) the teacher's distribution; its argmax is the hard label
    mask: Tensor,  # (B_u,) float
    params: NoisyStudentParams | NoisyStudentOfflineParams,
) -> StepOutput:
    """The student's side, shared by the live-teacher and the stored-set steps: CE on labeled clips plus
    lambda_u times the masked hard (or soft) loss on the strong view."""
    video = labeled["video"]
    # One student forward over labeled + strong, so BatchNorm sees one batch (as joint_forward).
    logits_lab, logits_strong = student(torch.cat([video, strong])).split([video.shape[0], strong.shape[0]])
    hard = teacher_probs.argmax(dim=-1)
    loss_sup = F.cross_entropy(logits_lab, labeled["label"])
    if params.soft:
        loss_unsup = soft_cross_entropy(logits_strong, teacher_probs.to(logits_strong.dtype), mask)
    else:
        loss_unsup = masked_cross_entropy(logits_strong, hard, mask)
    loss = loss_sup + params.lambda_u * loss_unsup
    return StepOutput(
        loss=loss,
        metrics=primary_loss_metrics(loss_sup, loss_unsup, loss, mask),
        pseudo={"primary": (hard, mask.bool())},
    )


@register_algorithm("noisy_student")
class NoisyStudent(Algorithm):
    description = "a frozen un-noised teacher labels the weak view; a noised student learns the strong (Xie 2020)"
    Params = NoisyStudentParams
    roles = ("primary", "teacher")
    frozen_roles = ("teacher",)
    needs_unlabeled = True

    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput:
        require_keys(labeled, ("video", "label"), "labeled", self.name)
        require_keys(unlabeled, ("weak", "strong"), "unlabeled", self.name)
        with torch.no_grad():
            logits_teacher = self.models["teacher"](unlabeled["weak"])
        max_probs, _ = pseudo_label(logits_teacher)
        mask = confidence_mask(max_probs, self.params.tau)
        out = student_step(self.models["primary"], labeled, unlabeled["strong"], logits_teacher.softmax(dim=-1),
                           mask, self.params)
        out.logits_weak = {"teacher": logits_teacher.detach()}
        return out


@dataclass(frozen=True)
class NoisyStudentOfflineParams:
    soft: bool = False  # learn the stored distributions q_i instead of their argmax (see NoisyStudentParams.soft)
    tau: float = 0.0  # filter on the stored max probability; 0: keep the set as the labeling stage filtered it
    lambda_u: float = 1.0  # pseudo-labeled loss weight (paper: labeled and pseudo-labeled data weigh the same)

    def __post_init__(self) -> None:
        check_param("noisy_student_offline", "tau", self.tau, "unit")
        check_param("noisy_student_offline", "lambda_u", self.lambda_u, "non_negative")


@register_algorithm("noisy_student_offline")
class NoisyStudentOffline(Algorithm):
    """The paper's actual procedure: the teacher labeled the unlabeled set ONCE (a batch-inference stage that
    stored q_i = softmax(T(u_i)) in data.pseudo_labels); the noised student learns those stored targets.

        m_i = 1[max q_i >= tau]
        hard: L_u = (1/B_u) sum_i m_i CE(argmax q_i, S(strong(u_i)));  soft: H(q_i, S(strong(u_i)))
        L = CE(S(v), y) + lambda_u * L_u
    """

    description = "a noised student learns a stored pseudo-labeled set (data.pseudo_labels; Noisy Student rounds)"
    Params = NoisyStudentOfflineParams
    roles = ("primary",)
    needs_unlabeled = True
    needs_targets = True

    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput:
        require_keys(labeled, ("video", "label"), "labeled", self.name)
        require_keys(unlabeled, ("strong", "target"), "unlabeled", self.name)
        target = unlabeled["target"]
        mask = confidence_mask(target.max(dim=-1).values, self.params.tau)
        return student_step(self.models["primary"], labeled, unlabeled["strong"], target, mask, self.params)
