"""SVFormer (Xing et al. CVPR 2023): an EMA teacher's confident pseudo-labels teach the strong view (FixMatch), and
two strong views mixed through a tube mask learn the mask-weighted mix of the teacher's two predictions.

    p_i = softmax(T(weak(u_i))), y_hat_i = argmax p_i, c_i = 1[max p_i >= tau]             (teacher: no gradient)
    s_i = TWAug(strong(u_i))                                    (temporal warping, `temporal_warp`)
    L_u = (1/B_u) sum_i c_i CE(y_hat_i, S(s_i))                                                      (FixMatch)
    x_i = M_i * s_i + (1 - M_i) * s_pi(i),  M_i a tube mask (one spatial mask repeated in every frame, cells of
          `mix_cube` px), lambda ~ Beta(mix_alpha, mix_alpha) of its cells from s_i, pi a random permutation;
          r_i = the share of x_i's pixels taken from s_i (lambda up to the rounding to whole cells)
    q_i = onehot(y_hat_i) if c_i else p_i                    (the released code's mix targets)
    L_mix = (1/B_u) sum_i w_i ||softmax(S(x_i)) - (r_i q_i + (1 - r_i) q_pi(i))||^2,
          w_i = r_i c_i + (1 - r_i) c_pi(i)
    L = CE(S(v), y) + lambda_u L_u + mix_weight L_mix      (the paper's L_s + gamma_1 L_un + gamma_2 L_mix)
    theta_T <- m theta_T + (1 - m) theta_S after every optimizer step, m = `ema_decay`.

When no teacher prediction reaches tau, c = 0 and w = 0 for every clip: both unlabeled terms are exactly 0 and only
the labeled term trains (the mix term is gated by the same confidences, as in the authors' released code).

The mix is done on pixels, which makes it model-agnostic (ssl_core.algorithms.tube_mix): for the zoo's ViTs
(tubelets 2 x 16 x 16) with mix_cube 16 it equals the paper's token mix exactly; for a 3D CNN it mixes space-time
tubes of mix_cube x mix_cube pixels over all frames. The labeled, strong and mixed clips go through the student in
ONE forward (BatchNorm sees one batch; one forward per step under DDP); the teacher reads the weak clips.

The teacher is a frozen copy of the student (eval mode, as the released code's EMA model) made when the algorithm
is built. Through the supervised warm-up (`unsup_warmup` steps, labeled clips only) it is re-copied after every
step, so the EMA starts from the warmed-up model (SVFormer creates its teacher after the warm-up epochs); it is
evaluated as "teacher" beside the student.

Defaults. The released training script (tools/train_net_emamix.py) reads tau, gamma_1, gamma_2, the Beta parameter
and the EMA momentum from config keys whose values it does not ship (TRAIN.DELTA, GAMMA1, GAMMA2, BETA, EMA), and
the paper's text was not at hand when this was written, so the defaults below are not checked against it: tau 0.3
(a low threshold as on video elsewhere, LTG's), ema_decay 0.99 (mean_teacher's), lambda_u = mix_weight = 1 and
mix_alpha 1 (a uniform mask ratio, CutMix's draw). Tune them; each is a key of its own.
Differences from the released code: L_mix compares probabilities (the code puts raw logits in its L2, which pins
them near [0, 1]); each clip gets its own mask arrangement and its own warp (the code shares one per batch); the
strong view is not also channel-dropped (the code's dropout2d(p=0.2), not in the paper).

    python -m ssl_core.loop --config configs/demo.yaml --set algorithm.name=svformer --set train.iterations=20
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_core.algorithms.base import Algorithm, StepOutput, check_param, require_keys
from ssl_core.algorithms.components import (
    LabeledBatch,
    masked_cross_entropy,
    warmup_step,
    weighted_probability_mse,
)
from ssl_core.algorithms.ema import ema_update, frozen_copy
from ssl_core.algorithms.registry import register_algorithm
from ssl_core.algorithms.temporal_warp import temporal_warp
from ssl_core.algorithms.tube_mix import tube_mask, tube_mix
from ssl_core.unwrap import unwrap


@dataclass(frozen=True)
class SVFormerParams:
    tau: float = 0.3  # teacher confidence that makes a pseudo-label count (module docstring: not the paper's checked)
    lambda_u: float = 1.0  # gamma_1: weight of the FixMatch term on the (warped) strong view
    mix_weight: float = 1.0  # gamma_2: weight of the Tube TokenMix term
    ema_decay: float = 0.99  # teacher momentum m (the key mean_teacher uses): ~100 student steps of memory
    mix_alpha: float = 1.0  # the mask ratio ~ Beta(mix_alpha, mix_alpha); 1: uniform on [0, 1]
    mix_cube: int = 16  # side in pixels of the mask cells: a ViT's patch (16) mixes whole tokens
    temporal_warp: bool = True  # TWAug on the strong view (and so on the mixed clips)
    unsup_warmup: int = 0  # optimizer steps on labeled clips only; the teacher is the warmed-up student

    def __post_init__(self) -> None:
        check_param("svformer", "tau", self.tau, "unit")
        check_param("svformer", "lambda_u", self.lambda_u, "non_negative")
        check_param("svformer", "mix_weight", self.mix_weight, "non_negative")
        check_param("svformer", "ema_decay", self.ema_decay, "unit")
        check_param("svformer", "mix_alpha", self.mix_alpha, "positive")
        check_param("svformer", "mix_cube", self.mix_cube, "positive")
        check_param("svformer", "unsup_warmup", self.unsup_warmup, "non_negative")


@register_algorithm("svformer")
class SVFormer(Algorithm):
    description = "EMA-teacher pseudo-labels + Tube TokenMix + temporal warping (Xing et al. CVPR 2023)"
    Params = SVFormerParams
    roles = ("primary",)
    needs_unlabeled = True

    def __init__(self, models: Mapping[str, nn.Module], params: Any = None) -> None:
        super().__init__(models, params)
        self.teacher = frozen_copy(unwrap(self.models["primary"]))

    def draw_mix(self, clips: Tensor) -> tuple[Tensor, Tensor]:  # partners (B,) int64, tube mask (B, 1, 1, h, w)
        """Each clip's partner (a random permutation) and the tube masks, lambda ~ Beta(mix_alpha, mix_alpha) of
        the cells from the clip itself; torch's global RNG, which the worker seeds and a checkpoint restores."""
        alpha = torch.tensor(float(self.params.mix_alpha))
        ratio = float(torch.distributions.Beta(alpha, alpha).sample())
        order = torch.randperm(len(clips)).to(clips.device)
        return order, tube_mask(len(clips), *clips.shape[-2:], self.params.mix_cube, ratio, device=clips.device)

    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput:
        require_keys(labeled, ("video", "label"), "labeled", self.name)
        require_keys(unlabeled, ("weak", "strong"), "unlabeled", self.name)
        p = self.params
        student = self.models["primary"]
        video, labels, weak, strong = labeled["video"], labeled["label"], unlabeled["weak"], unlabeled["strong"]
        if weak.shape != strong.shape or video.shape[1:] != strong.shape[1:]:
            raise ValueError(
                f"labeled video {tuple(video.shape)}, weak {tuple(weak.shape)} and strong {tuple(strong.shape)} "
                "must share (3, T, h, w)"
            )
        if self.steps_done < p.unsup_warmup:
            return warmup_step({"primary": student}, LabeledBatch(video, labels, labels, 1.0), 0.0)
        with torch.no_grad():
            logits_teacher = self.teacher(weak).float()
            probs = logits_teacher.softmax(dim=-1)
            confidence, hard = probs.max(dim=-1)
            confident = confidence >= p.tau
            # Confident clips teach their class, the others their whole distribution (the released code's targets).
            targets = torch.where(confident[:, None], F.one_hot(hard, probs.shape[1]).float(), probs)
            if p.temporal_warp:
                strong = temporal_warp(strong)
            order, mask = self.draw_mix(strong)
            mixed, share = tube_mix(strong, strong[order], mask)
            mix_targets = share[:, None] * targets + (1.0 - share[:, None]) * targets[order]
            mix_weights = share * confident.float() + (1.0 - share) * confident[order].float()
        logits_lab, logits_strong, logits_mix = student(torch.cat([video, strong, mixed])).split(
            [len(video), len(strong), len(mixed)]
        )
        loss_sup = F.cross_entropy(logits_lab, labels)
        loss_unsup = masked_cross_entropy(logits_strong, hard, confident)
        loss_mix = weighted_probability_mse(logits_mix, mix_targets, mix_weights)
        loss = loss_sup + p.lambda_u * loss_unsup + p.mix_weight * loss_mix
        return StepOutput(
            loss=loss,
            metrics={
                "loss/sup_primary": loss_sup.detach(),
                "loss/unsup_primary": loss_unsup.detach(),
                "loss/mix_primary": loss_mix.detach(),
                "loss/total": loss.detach(),
                "unsup_weight": loss.new_tensor(p.lambda_u),
                "pseudo/mask_rate_primary": confident.float().mean(),
                "pseudo/mix_weight_primary": mix_weights.mean(),
                "train/mix_share": share.mean(),
            },
            pseudo={"primary": (hard, confident)},
            logits_weak={"teacher": logits_teacher},
        )

    def after_optimizer_step(self) -> None:
        # Momentum 0 (a copy) through the warm-up: the first unlabeled step's teacher is the warmed-up student.
        momentum = 0.0 if self.steps_done < self.params.unsup_warmup else self.params.ema_decay
        ema_update(self.teacher, unwrap(self.models["primary"]), momentum)

    def eval_models(self) -> dict[str, nn.Module]:
        return {"primary": self.models["primary"], "teacher": self.teacher}

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": copy.deepcopy(self.teacher.state_dict())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        unknown = set(state) - {"teacher"}
        if unknown:
            raise KeyError(f"{self.name}: unexpected state keys {sorted(unknown)}")
        if "teacher" in state:
            self.teacher.load_state_dict(state["teacher"])
