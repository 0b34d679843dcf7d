"""MixMatch (Berthelot et al. 2019): sharpened guesses on unlabeled clips, MixUp of everything, L2 on U'.

q = Sharpen(DA(mean_k softmax(F(view_k(u)))), T) without gradient; DA is ReMixMatch's distribution alignment
(`distribution_alignment`, on by default, off in the paper's MixMatch): the guess is scaled by uniform / p_model,
p_model the running mean of the guesses (`stats_momentum`; starting at the first batch's mean). Without it, at a
few labels per class, the sharpened guesses drift to one class for every clip (confidence 0.98, accuracy at
chance by step 200 at 10 % labels of the synthetic benchmark, docs/results.md) and L_U then teaches that class.
K views: the unlabeled batch carries exactly two augmentations, "weak" and "strong", so K = 2 uses both as the
two views (K = 1 uses the weak view only); the K views' rows of U join W, as in the paper (|U'| = K * B_u).
X = (labeled clips, one-hot labels), U = (each view, q); W = shuffle(cat[X, U]);
lam ~ Beta(alpha, alpha), lam' = max(lam, 1 - lam); X' = MixUp(X, W[:|X|], lam'), U' = MixUp(U, W[|X|:], lam').
L_X = (1/|X'|) sum H(p', softmax(F(x'))), L_U = (1/(L |U'|)) sum ||q' - softmax(F(u'))||^2 (L = classes),
L = L_X + w(t) L_U, w(t) = lambda_u * min(step / rampup_iters, 1) (the reference code's LINEAR ramp).
The mixed batch X' + U' goes through the model in ONE forward (BatchNorm sees one batch; the paper
interleaves to the same end). Beta and the permutation use torch's global RNG, which the worker seeds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_core.algorithms.base import Algorithm, StepOutput, check_param, require_keys
from ssl_core.algorithms.components import linear_rampup, mixmatch_losses, mixup, sharpen
from ssl_core.algorithms.registry import register_algorithm
from ssl_core.algorithms.thresholds import DistributionAlignment, validate_threshold_options


@dataclass(frozen=True)
class MixMatchParams:
    K: int = 2  # augmentations per unlabeled clip: 2 = the batch's weak and strong views, 1 = weak only
    T: float = 0.5  # sharpening temperature: < 1 lowers the guess entropy (paper default)
    alpha: float = 0.75  # Beta(alpha, alpha) MixUp parameter (paper default)
    lambda_u: float = 75.0  # max L_U weight; the paper's CIFAR-10 value for L_U normalised by classes
    rampup_iters: int = 400  # steps of the linear ramp of lambda_u (reference code ramps linearly)
    distribution_alignment: bool = True  # ReMixMatch DA of the guesses: keeps them from collapsing to one class
    stats_momentum: float = 0.99  # DA's running mean of the guesses; 0.99 follows a 1000-step run (USB: 0.999)

    def __post_init__(self) -> None:
        if self.K not in (1, 2):
            raise ValueError(f"mixmatch.K must be 1 or 2 (the batch carries a weak and a strong view), got {self.K}")
        check_param("mixmatch", "T", self.T, "positive")
        check_param("mixmatch", "alpha", self.alpha, "positive")
        check_param("mixmatch", "lambda_u", self.lambda_u, "non_negative")
        check_param("mixmatch", "rampup_iters", self.rampup_iters, "non_negative")
        validate_threshold_options("mixmatch", "fixed", self.distribution_alignment, self.stats_momentum)


@register_algorithm("mixmatch")
class MixMatch(Algorithm):
    description = "sharpened multi-view guesses + MixUp of labeled and unlabeled clips (Berthelot et al. 2019)"
    Params = MixMatchParams
    roles = ("primary",)
    needs_unlabeled = True

    def __init__(self, models: Mapping[str, nn.Module], params: Any = None) -> None:
        super().__init__(models, params)
        self.step = torch.zeros((), dtype=torch.long)
        p = self.params
        self.align = DistributionAlignment(p.stats_momentum) if p.distribution_alignment else None

    def sample_mix(self, n: int) -> tuple[float, Tensor]:
        """lam' = max(lam, 1 - lam) with lam ~ Beta(alpha, alpha), and a permutation of n rows (global RNG)."""
        alpha = torch.tensor(float(self.params.alpha))
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        return max(lam, 1.0 - lam), torch.randperm(n)

    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput:
        require_keys(labeled, ("video", "label"), "labeled", self.name)
        keys = ("weak", "strong") if self.params.K == 2 else ("weak",)
        require_keys(unlabeled, keys, "unlabeled", self.name)
        model = self.models["primary"]
        video = labeled["video"]
        views = [unlabeled[k] for k in keys]
        for view in views:
            if view.shape[1:] != video.shape[1:] or view.shape != views[0].shape:
                raise ValueError(
                    f"labeled video {tuple(video.shape)} and unlabeled views {[tuple(v.shape) for v in views]} "
                    "must share (3, T, h, w) to be mixed"
                )
        b_x, b_u = len(video), len(views[0])
        with torch.no_grad():
            logits_views = model(torch.cat(views)).split(b_u)
            q_bar = torch.stack([lv.softmax(dim=-1) for lv in logits_views]).mean(dim=0)
            q = sharpen(self.align(q_bar) if self.align is not None else q_bar, self.params.T)
            num_classes = q.shape[1]
            p = F.one_hot(labeled["label"], num_classes).to(q.dtype)
            inputs = torch.cat([video, *views])
            targets = torch.cat([p, *([q] * len(views))])
            lam, perm = self.sample_mix(len(inputs))
            perm = perm.to(inputs.device)
            mixed_inputs = mixup(inputs, inputs[perm], lam)
            mixed_targets = mixup(targets, targets[perm], lam)
        logits = model(mixed_inputs)
        logits_x, logits_u = logits[:b_x], logits[b_x:]
        loss_x, loss_u = mixmatch_losses(logits_x, mixed_targets[:b_x], logits_u, mixed_targets[b_x:])
        weight = self.params.lambda_u * linear_rampup(self.step, self.params.rampup_iters)
        self.step += 1
        loss = loss_x + weight * loss_u
        max_q, hard = q.max(dim=-1)
        return StepOutput(
            loss=loss,
            metrics={
                "loss/sup_primary": loss_x.detach(),
                "loss/unsup_primary": loss_u.detach(),
                "loss/total": loss.detach(),
                "pseudo/mask_rate_primary": torch.ones(()),
                "pseudo/guess_confidence_primary": max_q.mean(),
                "train/unsup_weight": torch.tensor(weight),
                "train/mixup_lambda": torch.tensor(lam),
            },
            pseudo={"primary": (hard, torch.ones_like(hard, dtype=torch.bool))},
            logits_weak={"primary": logits_views[0].detach()},
        )

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"step": self.step.clone()}
        if self.align is not None:
            state["align"] = self.align.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        unknown = set(state) - {"step", "align"}
        if unknown:
            raise KeyError(f"{self.name}: unexpected state keys {sorted(unknown)}")
        if "step" in state:
            self.step = torch.as_tensor(state["step"]).detach().clone().long().cpu()
        if self.align is not None:
            self.align.load_state_dict(state.get("align", {}))
