"""Meta Pseudo Labels (Pham et al. 2021), practical first-order form: the teacher learns from the student.

Roles: "primary" is the STUDENT (the deployed model); "teacher" has the same architecture, separate weights.
Both are trained by the worker's single optimizer: the loss is the sum of the student's and the teacher's
terms, and since their parameters are disjoint the gradients separate.

Per step, with u_w / u_s the weak / strong views and (v, y) the labeled clips:
    y_hat = argmax T(u_s)                              (hard pseudo-label, as the reference MPL code: argmax of
                                                        the teacher's strong-view logits, no sampling)
    L_u^S = (1/B_u) sum_i CE(y_hat_i, S(u_s_i))          (the student learns ONLY from pseudo-labels; every
                                                        label is used, mask rate 1)
    virtual step: theta_S' = theta_S - eta * grad_{theta_S} L_u^S    (eta = student_lr_virtual, plain SGD)
    h = L_l(theta_S) - L_l(theta_S')                    (L_l = CE of the student on (v, y); no gradient)
    L_mpl^T = h * (1/B_u) sum_i CE(y_hat_i, T(u_s_i))
    L_uda^T = (1/B_u) sum_i 1[max q_i >= uda_tau] H(q_i, T(u_s_i)),  q_i = softmax(T(u_w_i) / uda_temperature)
    L^T = CE(T(v), y) + lambda_uda * ramp(step) * L_uda^T + L_mpl^T
    L = L_u^S + L^T

Sign of h: the worker runs gradient DESCENT on L. With h > 0, descending on h * CE(y_hat, T(u_s)) lowers that CE,
i.e. raises the teacher's probability of y_hat. h = L_before - L_after is > 0 exactly when the student's
step on y_hat LOWERED its labeled loss, so a pseudo-label that helped the student becomes more likely, and one
that hurt (h < 0) less likely. (The reference kekmodel/MPL-pytorch code computes the same s_loss_l_old -
s_loss_l_new after the student's real step.)

The virtual step is functional (torch.func.functional_call with theta_S'), so the student's real parameters
are untouched; the worker's optimizer then takes the real step on L_u^S. Both labeled passes (before/after) run
the student in EVAL mode under no_grad: BatchNorm uses (and does not update) its running statistics and
dropout / stochastic depth are off, so h measures only the parameter change and no buffer is written; they
also run outside autocast (fp32), since h is a small difference of two losses. Cost: one extra student
backward (autograd.grad) and two labeled-only forwards.

Final fine-tuning: from optimizer step `finetune_after` on (the step counter is in state_dict), the loss is
the student's labeled CE only; the teacher gets no loss and no gradient (its .grad stays None, which torch
optimizers skip).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ssl_core.algorithms.base import Algorithm, StepOutput, check_param, require_keys
from ssl_core.algorithms.components import joint_forward
from ssl_core.algorithms.noisy_student import soft_cross_entropy
from ssl_core.algorithms.registry import register_algorithm


def mpl_reward(loss_before: Tensor, loss_after: Tensor) -> Tensor:  # scalar, no gradient
    """h = L_l(before) - L_l(after the virtual step): positive when the pseudo-labels helped the student."""
    return (loss_before - loss_after).detach()


def mpl_teacher_loss(
    teacher_logits_strong: Tensor,  # (B_u, C)
    pseudo_labels: Tensor,  # (B_u,) int64, the hard labels the student was taught
    reward: Tensor | float,  # h, a constant (detached)
) -> Tensor:  # scalar
    """h * mean_i CE(y_hat_i, T(u_s_i)): descending on it raises p_T(y_hat) when h > 0 (the label helped)."""
    if torch.is_tensor(reward):
        reward = reward.detach()
    return reward * F.cross_entropy(teacher_logits_strong, pseudo_labels)


def uda_targets(
    teacher_logits_weak: Tensor,  # (B_u, C)
    temperature: float,
    tau: float,
) -> tuple[Tensor, Tensor]:  # q (B_u, C) without grad, float mask (B_u,)
    """UDA soft targets q = softmax(logits / temperature) and the mask max(q) >= tau (on the sharpened q, as
    the reference MPL code)."""
    with torch.no_grad():
        q = F.softmax(teacher_logits_weak.detach() / temperature, dim=-1)
        mask = (q.max(dim=-1).values >= tau).to(q.dtype)
    return q, mask


def uda_consistency_loss(
    teacher_logits_strong: Tensor,  # (B_u, C)
    teacher_logits_weak: Tensor,  # (B_u, C); receives no gradient
    temperature: float,
    tau: float,
) -> Tensor:  # scalar
    """(1/B_u) sum_i 1[max q_i >= tau] H(q_i, softmax(T(u_s_i))), q_i = softmax(T(u_w_i) / temperature)."""
    q, mask = uda_targets(teacher_logits_weak, temperature, tau)
    return soft_cross_entropy(teacher_logits_strong, q, mask)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; every submodule's own training flag restored afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


def virtual_step_losses(
    student: nn.Module,
    loss_unsup: Tensor,  # scalar L_u^S, with its graph to the student's parameters
    video: Tensor,  # (B_l, ...) labeled clips
    labels: Tensor,  # (B_l,)
    lr: float,
) -> tuple[Tensor, Tensor]:  # L_l before, L_l after the virtual SGD step; both without gradient
    """The student's labeled loss before and after theta' = theta - lr * grad L_u^S, without touching theta.

    The graph of loss_unsup is retained for the real backward. Both passes: eval mode, no_grad, fp32.
    """
    named = [(name, p) for name, p in student.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_unsup, [p for _, p in named], retain_graph=True, allow_unused=True)
    stepped = {name: p if g is None else p - lr * g for (name, p), g in zip(named, grads, strict=True)}
    no_autocast = torch.autocast(device_type=video.device.type, enabled=False)
    with torch.no_grad(), no_autocast, _eval_mode(student):
        before = F.cross_entropy(student(video), labels)
        # Parameters not in `stepped` (frozen ones) and every buffer come from the module itself; in eval mode
        # BatchNorm only reads its running statistics.
        after = F.cross_entropy(functional_call(student, stepped, (video,)), labels)
    return before, after


@dataclass(frozen=True)
class MetaPseudoLabelsParams:
    student_lr_virtual: float = 0.05  # eta of the virtual SGD step whose labeled-loss change rewards the teacher;
    # matches the default train.lr (SGD 0.05) so the reward reflects a step of the real size
    uda_tau: float = 0.8  # UDA confidence threshold on the teacher's sharpened weak-view probabilities (UDA paper)
    uda_temperature: float = 0.7  # sharpening of the UDA soft targets (< 1 sharper; MPL reference code: 0.7)
    lambda_uda: float = 1.0  # weight of the teacher's UDA consistency loss (reference CIFAR code: 8; with few
    # labeled videos a smaller weight keeps the teacher's own supervised signal dominant)
    uda_ramp_steps: int = 1000  # lambda_uda ramps linearly over the first steps (reference: uda_steps); 0 = no ramp
    finetune_after: int | None = None  # optimizer step from which only the student's labeled CE trains (MPL's
    # final fine-tuning on labeled data); None = never

    def __post_init__(self) -> None:
        check_param("meta_pseudo_labels", "student_lr_virtual", self.student_lr_virtual, "positive")
        check_param("meta_pseudo_labels", "uda_tau", self.uda_tau, "unit")
        check_param("meta_pseudo_labels", "uda_temperature", self.uda_temperature, "positive")
        check_param("meta_pseudo_labels", "lambda_uda", self.lambda_uda, "non_negative")
        check_param("meta_pseudo_labels", "uda_ramp_steps", self.uda_ramp_steps, "non_negative")
        if self.finetune_after is not None and self.finetune_after < 0:
            raise ValueError(f"meta_pseudo_labels.finetune_after must be >= 0 or None, got {self.finetune_after}")


@register_algorithm("meta_pseudo_labels")
class MetaPseudoLabels(Algorithm):
    description = "meta pseudo labels: the teacher is rewarded by the student's labeled-loss change (Pham 2021)"
    Params = MetaPseudoLabelsParams
    roles = ("primary", "teacher")  # primary = the student, deployed; teacher = same architecture, own weights
    needs_unlabeled = True

    def __init__(self, models: Mapping[str, nn.Module], params: Any = None) -> None:
        super().__init__(models, params)
        self.step = torch.zeros((), dtype=torch.long)  # optimizer steps taken (drives the ramp and fine-tuning)

    def after_optimizer_step(self) -> None:
        self.step += 1

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != {"step"}:
            raise KeyError(f"{self.name}: expects state keys ['step'], got {sorted(state)}")
        self.step = torch.as_tensor(state["step"], dtype=torch.long).clone()

    def finetuning(self) -> bool:
        after = self.params.finetune_after
        return after is not None and int(self.step) >= after

    def uda_weight(self) -> float:
        p = self.params
        ramp = 1.0 if p.uda_ramp_steps == 0 else min(1.0, (int(self.step) + 1) / p.uda_ramp_steps)
        return p.lambda_uda * ramp

    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput:
        require_keys(labeled, ("video", "label"), "labeled", self.name)
        if self.finetuning():
            return self._finetune_step(labeled)
        require_keys(unlabeled, ("weak", "strong"), "unlabeled", self.name)
        student, teacher = self.models["primary"], self.models["teacher"]
        video, labels = labeled["video"], labeled["label"]

        t_lab, t_weak, t_strong = joint_forward(teacher, video, unlabeled["weak"], unlabeled["strong"])
        loss_sup_t = F.cross_entropy(t_lab, labels)
        q, uda_mask = uda_targets(t_weak, self.params.uda_temperature, self.params.uda_tau)
        loss_uda_t = soft_cross_entropy(t_strong, q, uda_mask)
        hard = t_strong.detach().argmax(dim=-1)

        loss_unsup_s = F.cross_entropy(student(unlabeled["strong"]), hard)
        before, after = virtual_step_losses(student, loss_unsup_s, video, labels, self.params.student_lr_virtual)
        reward = mpl_reward(before, after)
        loss_mpl_t = mpl_teacher_loss(t_strong, hard, reward)

        uda_weight = self.uda_weight()
        loss = loss_unsup_s + loss_sup_t + uda_weight * loss_uda_t + loss_mpl_t
        ones = torch.ones_like(hard, dtype=torch.bool)
        metrics = {
            "loss/total": loss.detach(),
            "loss/unsup_primary": loss_unsup_s.detach(),
            "loss/sup_primary": before,  # the student's labeled CE (eval mode), before its step: not trained on
            "loss/sup_teacher": loss_sup_t.detach(),
            "loss/uda_teacher": loss_uda_t.detach(),
            "loss/mpl_teacher": loss_mpl_t.detach(),
            "mpl/reward": reward,
            "mpl/uda_weight": loss.detach().new_tensor(uda_weight),
            "mpl/finetune": loss.detach().new_zeros(()),
            "pseudo/mask_rate_primary": ones.float().mean(),  # MPL teaches with every pseudo-label
            "pseudo/mask_rate_teacher": uda_mask.mean(),  # the UDA targets that passed uda_tau
        }
        return StepOutput(
            loss=loss,
            metrics=metrics,
            pseudo={"primary": (hard, ones), "teacher": (q.argmax(dim=-1), uda_mask.bool())},
            logits_weak={"teacher": t_weak.detach()},
        )

    def _finetune_step(self, labeled: dict[str, Tensor]) -> StepOutput:
        """MPL's final stage: the student's labeled CE only; the teacher is not run and gets no gradient."""
        loss = F.cross_entropy(self.models["primary"](labeled["video"]), labeled["label"])
        zero = loss.detach().new_zeros(())
        metrics = {
            "loss/total": loss.detach(),
            "loss/unsup_primary": zero,
            "loss/sup_primary": loss.detach(),
            "loss/sup_teacher": zero,
            "loss/uda_teacher": zero,
            "loss/mpl_teacher": zero,
            "mpl/reward": zero,
            "mpl/uda_weight": zero,
            "mpl/finetune": loss.detach().new_ones(()),
            "pseudo/mask_rate_primary": zero,
            "pseudo/mask_rate_teacher": zero,
        }
        return StepOutput(loss=loss, metrics=metrics)
