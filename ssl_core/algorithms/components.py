"""Shared pieces of semi-supervised algorithms, as pure functions (tensors in, tensor out).

Kept free of algorithm state so they can be checked one by one against an independent reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_core.algorithms.base import StepOutput, check_param


def pseudo_label(
    logits_weak: Tensor,  # (B, C)
) -> tuple[Tensor, Tensor]:  # max probability (B,) float, hard label (B,) int64; both without grad
    """Softmax confidence and argmax class of weak-view logits; the targets never carry gradient."""
    with torch.no_grad():
        max_probs, hard_labels = logits_weak.detach().softmax(dim=-1).max(dim=-1)
    return max_probs, hard_labels


def confidence_mask(max_probs: Tensor, tau: float) -> Tensor:  # (B,) float in {0., 1.}
    """1 where max(p) >= tau (FixMatch's inclusive threshold)."""
    return (max_probs >= tau).to(max_probs.dtype)


def masked_cross_entropy(
    logits: Tensor,  # (B, C)
    targets: Tensor,  # (B,) int64
    mask: Tensor,  # (B,) float or bool
) -> Tensor:  # scalar
    """sum_i mask_i * CE_i / B: normalised by the WHOLE batch, not the masked count (FixMatch).

    Dividing by B keeps the loss scale tied to how many pseudo-labels pass: early in training, when few
    pass, the unlabeled term stays small instead of being dominated by a handful of samples.
    """
    if targets.shape != logits.shape[:1] or mask.shape != logits.shape[:1]:
        raise ValueError(
            f"masked_cross_entropy: logits {tuple(logits.shape)}, targets {tuple(targets.shape)} and mask "
            f"{tuple(mask.shape)} must share the batch size"
        )
    if logits.shape[0] == 0:
        return logits.sum() * 0.0  # keeps the graph and dtype; an empty batch teaches nothing
    ce = F.cross_entropy(logits, targets, reduction="none")
    return (ce * mask.to(ce.dtype)).sum() / logits.shape[0]


def primary_loss_metrics(loss_sup: Tensor, loss_unsup: Tensor, loss: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """The metrics of a one-model step with a supervised and an unlabeled term, under the names the console and
    tracking read; `mask` (B_u,) says which unlabeled clips taught."""
    return {
        "loss/sup_primary": loss_sup.detach(),
        "loss/unsup_primary": loss_unsup.detach(),
        "loss/total": loss.detach(),
        "pseudo/mask_rate_primary": mask.float().mean(),
    }


def sharpen(p: Tensor, temperature: float) -> Tensor:  # (B, C) -> (B, C)
    """MixMatch: p_i^(1/T) / sum_j p_j^(1/T); T < 1 lowers the entropy."""
    if temperature <= 0:
        raise ValueError(f"sharpen: temperature must be > 0, got {temperature}")
    powered = p.pow(1.0 / temperature)
    return powered / powered.sum(dim=-1, keepdim=True)


def mixup(x1: Tensor, x2: Tensor, lam: float | Tensor) -> Tensor:
    """lam * x1 + (1 - lam) * x2 (callers pass lam = max(l, 1 - l) to stay closer to x1, as MixMatch)."""
    if x1.shape != x2.shape:
        raise ValueError(f"mixup: shapes differ, {tuple(x1.shape)} vs {tuple(x2.shape)}")
    return lam * x1 + (1.0 - lam) * x2


def kd_loss(
    student_logits: Tensor,  # (B, C)
    teacher_logits: Tensor,  # (B, C); receives no gradient
    temperature: float,
) -> Tensor:  # scalar
    """Hinton KD: KL(P_T^tau || P_S^tau) * tau^2, averaged over the batch (tau^2 keeps the gradient scale)."""
    if temperature <= 0:
        raise ValueError(f"kd_loss: temperature must be > 0, got {temperature}")
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def joint_forward(
    model: nn.Module,
    labeled_video: Tensor,  # (B_l, 3, T, h, w)
    weak: Tensor,  # (B_u, 3, T, h, w)
    strong: Tensor,  # (B_u, 3, T, h, w)
) -> tuple[Tensor, Tensor, Tensor]:  # logits (B_l, C), (B_u, C), (B_u, C)
    """ONE forward over labeled + weak + strong, split back (the USB way).

    BatchNorm sees one batch, so its statistics stay consistent across the three parts, and under DDP each
    model runs exactly one forward per step.
    """
    if weak.shape != strong.shape:
        raise ValueError(f"weak {tuple(weak.shape)} and strong {tuple(strong.shape)} views must match")
    if labeled_video.shape[1:] != weak.shape[1:]:
        raise ValueError(
            f"labeled video {tuple(labeled_video.shape)} and unlabeled views {tuple(weak.shape)} must share "
            "(3, T, h, w) to run in one forward"
        )
    logits = model(torch.cat([labeled_video, weak, strong]))
    return logits.split([labeled_video.shape[0], weak.shape[0], strong.shape[0]])


def sigmoid_rampup(step: int | float | Tensor, rampup_iters: int) -> float:
    """Mean Teacher ramp exp(-5 (1 - t)^2), t = clip(step / rampup_iters, 0, 1); 1 when rampup_iters is 0.

    Starts at exp(-5) = 0.0067 (not exactly 0), reaches 1 at step = rampup_iters.
    """
    if rampup_iters <= 0:
        return 1.0
    t = min(max(float(step) / rampup_iters, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def linear_rampup(step: int | float | Tensor, rampup_iters: int) -> float:
    """MixMatch ramp clip(step / rampup_iters, 0, 1); 1 when rampup_iters is 0."""
    if rampup_iters <= 0:
        return 1.0
    return min(max(float(step) / rampup_iters, 0.0), 1.0)


def softmax_mse(
    student_logits: Tensor,  # (B, C)
    teacher_logits: Tensor,  # (B, C); receives no gradient
) -> Tensor:  # scalar
    """Mean Teacher consistency: (1/B) sum_i ||softmax(s_i) - softmax(t_i)||^2 (squared L2 per sample, summed
    over classes, averaged over the batch)."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"softmax_mse: shapes differ, {tuple(student_logits.shape)} vs {tuple(teacher_logits.shape)}")
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    diff = student_logits.softmax(dim=-1) - teacher_logits.detach().softmax(dim=-1).to(student_logits.dtype)
    return diff.pow(2).sum(dim=-1).mean()


def weighted_probability_mse(
    logits: Tensor,  # (B, C)
    targets: Tensor,  # (B, C) class probabilities; receive no gradient
    weights: Tensor,  # (B,) per-sample weights; receive no gradient
) -> Tensor:  # scalar
    """(1/B) sum_i w_i ||softmax(logits_i) - targets_i||^2 (squared L2 summed over classes): SVFormer's mix loss.
    Normalised by the whole batch, as masked_cross_entropy, so rows of weight 0 pull the loss down, not up."""
    if logits.shape != targets.shape or weights.shape != logits.shape[:1]:
        raise ValueError(f"weighted_probability_mse: logits {tuple(logits.shape)}, targets {tuple(targets.shape)} "
                         f"and weights {tuple(weights.shape)} must share the batch (and class) size")
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    probs = logits.softmax(dim=-1)  # float32 under autocast: the targets keep their precision
    diff = probs - targets.detach().to(probs.dtype)
    return (diff.pow(2).sum(dim=-1) * weights.detach().to(probs.dtype)).mean()


def soft_cross_entropy(
    logits: Tensor,  # (B, C)
    targets: Tensor,  # (B, C) probabilities (rows sum to 1); receive no gradient
) -> Tensor:  # scalar
    """(1/B) sum_i H(targets_i, softmax(logits_i)) = -(1/B) sum_i sum_c t_ic log softmax(logits_i)_c."""
    if logits.shape != targets.shape:
        raise ValueError(f"soft_cross_entropy: shapes differ, {tuple(logits.shape)} vs {tuple(targets.shape)}")
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return -(targets.detach().to(logits.dtype) * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def mixmatch_losses(
    logits_x: Tensor,  # (B_x, C) logits of the mixed labeled part
    targets_x: Tensor,  # (B_x, C) mixed labeled targets (mixed one-hots)
    logits_u: Tensor,  # (B_u', C) logits of the mixed unlabeled part
    targets_u: Tensor,  # (B_u', C) mixed sharpened guesses
) -> tuple[Tensor, Tensor]:  # L_X, L_U
    """MixMatch: L_X = (1/|X'|) sum H(p, softmax(logits_x)); L_U = (1/(L |U'|)) sum ||q - softmax(logits_u)||^2.

    L is the number of classes, so L_U is the mean over samples AND classes of the squared error.
    Targets receive no gradient.
    """
    loss_x = soft_cross_entropy(logits_x, targets_x)
    if logits_u.shape != targets_u.shape:
        raise ValueError(f"mixmatch_losses: shapes differ, {tuple(logits_u.shape)} vs {tuple(targets_u.shape)}")
    if logits_u.shape[0] == 0:
        return loss_x, logits_u.sum() * 0.0
    loss_u = (logits_u.softmax(dim=-1) - targets_u.detach().to(logits_u.dtype)).pow(2).mean()
    return loss_x, loss_u


def unlabeled_ramp(step: int, warmup: int, rampup: int) -> float:
    """Weight of the unlabeled term at optimizer step `step`: 0 during the supervised warm-up (LTG, TCL: the
    model first learns the labels, so its first pseudo-labels are not noise), then linear to 1 over `rampup`."""
    if step < warmup:
        return 0.0
    return linear_rampup(step - warmup + 1, rampup)


@dataclass(frozen=True)
class LabeledBatch:
    video: Tensor  # (B_l, 3, T, h, w), mixed when mixup is on
    labels_a: Tensor  # (B_l,) int64
    labels_b: Tensor  # (B_l,) int64, the labels of the clips mixed in (labels_a without mixup)
    lam: float  # weight of labels_a


def mix_labeled(video: Tensor, labels: Tensor, alpha: float) -> LabeledBatch:
    """MixUp of the labeled batch with a permutation of itself, lam ~ Beta(alpha, alpha); alpha 0: unchanged.

    Few labeled clips are memorised within a few hundred steps; mixing them gives the labeled term new inputs
    every step and softer targets, so the model stays calibrated enough for its confidence to mean something."""
    if alpha <= 0 or video.shape[0] < 2:
        return LabeledBatch(video, labels, labels, 1.0)
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    order = torch.randperm(video.shape[0], device=video.device)
    return LabeledBatch(mixup(video, video[order], lam), labels, labels[order], lam)


def labeled_loss(logits: Tensor, batch: LabeledBatch, label_smoothing: float = 0.0) -> Tensor:  # scalar
    """Cross-entropy of the (mixed) labeled batch, with label smoothing."""
    loss_a = F.cross_entropy(logits, batch.labels_a, label_smoothing=label_smoothing)
    if batch.lam == 1.0:
        return loss_a
    return batch.lam * loss_a + (1.0 - batch.lam) * F.cross_entropy(
        logits, batch.labels_b, label_smoothing=label_smoothing
    )


@dataclass(frozen=True)
class RecipeParams:
    """Options shared by the pseudo-labeling methods (fixmatch, cmpl) and, for the labeled term, supervised."""

    # Optimizer steps on labeled clips only before the unlabeled term starts (LTG: 30 of 180 epochs).
    unsup_warmup: int = 0
    # Then the unlabeled weight ramps linearly from 0 to lambda_u over this many steps.
    unsup_rampup: int = 0
    # Pseudo-labels from the EMA copy of the model (train.ema_decay > 0), once it exists: a smoother teacher
    # than the raw weights, which chase each batch (the Mean Teacher / SVFormer argument).
    ema_teacher: bool = False
    # Without an EMA teacher: the model's weak-view forward without gradient, apart from the labeled + strong
    # one (a third less backward work and activation memory; BatchNorm then sees the weak clips as their own
    # batch). Off by default: its accuracy effect is in docs/results.md.
    weak_no_grad: bool = False
    # Labeled-term regularisation against memorising a handful of clips.
    label_smoothing: float = 0.0
    labeled_mixup: float = 0.0  # MixUp alpha on the labeled batch; 0: off

    def check_recipe(self, algorithm: str) -> None:
        for name in ("unsup_warmup", "unsup_rampup"):
            check_param(algorithm, name, getattr(self, name), "non_negative")
        check_param(algorithm, "label_smoothing", self.label_smoothing, "unit")
        check_param(algorithm, "labeled_mixup", self.labeled_mixup, "non_negative")


def pseudo_label_forward(
    model: nn.Module,
    teacher: nn.Module | None,  # the EMA copy (eval mode, no grad) or None: the model labels its own weak view
    labeled_video: Tensor,  # (B_l, 3, T, h, w)
    weak: Tensor,  # (B_u, 3, T, h, w)
    strong: Tensor,  # (B_u, 3, T, h, w)
    *,
    weak_no_grad: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:  # logits (B_l, C), weak (B_u, C) without grad, strong (B_u, C)
    """joint_forward, or with a teacher (or weak_no_grad): the model on labeled + strong (one pass), the
    teacher (or the model itself) on weak without gradient."""
    if teacher is None and not weak_no_grad:
        return joint_forward(model, labeled_video, weak, strong)
    logits_lab, logits_strong = model(torch.cat([labeled_video, strong])).split([labeled_video.shape[0],
                                                                                  strong.shape[0]])
    with torch.no_grad():
        logits_weak = (teacher if teacher is not None else model)(weak).to(logits_strong.dtype)
    return logits_lab, logits_weak, logits_strong


def warmup_step(models: dict[str, nn.Module], batch: LabeledBatch, label_smoothing: float) -> StepOutput:
    """A supervised warm-up step of every model (fixmatch, cmpl): the unlabeled clips are not even forwarded,
    a third of the step's work."""
    sup = {role: labeled_loss(model(batch.video), batch, label_smoothing) for role, model in models.items()}
    loss = sum(sup.values())
    metrics = {f"loss/sup_{role}": value.detach() for role, value in sup.items()}
    return StepOutput(loss=loss, metrics={**metrics, "loss/total": loss.detach(), "unsup_weight": loss.new_tensor(0.0)})
