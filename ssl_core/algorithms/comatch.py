"""CoMatch (Li, Xiong and Hoi, ICCV 2021): pseudo-labels and embeddings regularise each other.

Per step, with p_i the weak-view probabilities (the EMA teacher's with `ema_teacher`) and z the L2-normalised
features entering the classifier head (the embedding; no separate projector):
  memory smoothing   q_i = alpha p_i + (1 - alpha) sum_k a_ik m_k,  a_ik = softmax_k(z_i . z_k / temperature)
                     over a memory of the last `memory_size` weak embeddings z_k with their targets m_k (the
                     labeled clips' one-hot labels among them): a clip's pseudo-label borrows from its neighbours.
  class term         CE(argmax q_i, F(strong(u_i))) where max q_i >= tau (FixMatch's, on the smoothed q).
  graph contrast     W^q_ij = q_i . q_j, 1 on the diagonal, 0 below `contrast_threshold`, rows normalised;
                     W^z_ij = softmax_j(z^s_i . z^w_j / temperature) between the strong views' embeddings (with
                     gradient) and the weak views' (without); L_c = -(1/B_u) sum_ij W^q_ij log W^z_ij: clips whose
                     pseudo-labels agree pull together in feature space, the rest push apart.
L = CE(labeled) + ramp * (lambda_u * class term + lambda_c * L_c).
The contrast lets every unlabeled clip shape the features, not only the confident ones (what it bought, and did
not, on appearance- and motion-defined classes: docs/results.md). The weak views always go through without
gradient (the recipe's weak_no_grad is implied). The memory is not checkpointed: after a resume it refills within
memory_size / (B_l + B_u) steps. Pseudo-label options (threshold, distribution alignment) as fixmatch.
`background_swap`: the strong views keep their moving foreground on another clip's still frame (FAME), so the
class term and the contrast cannot match a clip's views by their scenery.

    python -m ssl_core.loop --config configs/demo.yaml --set algorithm.name=comatch --set train.iterations=40
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_core.algorithms.base import Algorithm, StepOutput, check_param, require_keys
from ssl_core.algorithms.components import (
    RecipeParams,
    labeled_loss,
    masked_cross_entropy,
    mix_labeled,
    unlabeled_ramp,
    warmup_step,
)
from ssl_core.algorithms.registry import register_algorithm
from ssl_core.algorithms.thresholds import LabelerState, PseudoLabelOptions
from ssl_core.data.foreground import swap_view_backgrounds
from ssl_core.models.heads import head_inputs


@dataclass(frozen=True)
class CoMatchParams(PseudoLabelOptions, RecipeParams):
    tau: float = 0.95  # confidence threshold of the class term, on the memory-smoothed pseudo-label
    lambda_u: float = 1.0  # weight of the class term
    lambda_c: float = 1.0  # weight of the graph-contrastive term (CoMatch: 1 on CIFAR, up to 10 on ImageNet)
    alpha: float = 0.9  # weight of the model's own prediction in the smoothed pseudo-label (CoMatch's)
    temperature: float = 0.2  # of the embedding similarities, in the smoothing and the contrast (CoMatch's)
    contrast_threshold: float = 0.8  # pseudo-label agreement q_i . q_j below which two clips are not positives
    memory_size: int = 256  # weak embeddings remembered for the smoothing (labeled ones included)
    # Share of strong views whose moving foreground is pasted on another clip's still frame (FAME, as the
    # appearance pretraining's pretrain.background_swap): weak and strong views of a clip share their scenery,
    # which the contrast would otherwise learn to match on.
    background_swap: float = 0.0
    foreground_ratio: float = 0.15  # share of a swapped clip's pixels taken as its foreground

    def __post_init__(self) -> None:
        self.check_pseudo_labels("comatch")
        for name in ("lambda_u", "lambda_c"):
            check_param("comatch", name, getattr(self, name), "non_negative")
        for name in ("alpha", "contrast_threshold", "background_swap", "foreground_ratio"):
            check_param("comatch", name, getattr(self, name), "unit")
        check_param("comatch", "temperature", self.temperature, "positive")
        check_param("comatch", "memory_size", self.memory_size, "positive")
        self.check_recipe("comatch")


def _unit(features: Tensor) -> Tensor:
    return F.normalize(features.float(), dim=-1)


class EmbeddingMemory:
    """A FIFO of (L2-normalised embedding, target distribution) pairs, filled from each step's weak views."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.z: Tensor | None = None
        self.p: Tensor | None = None

    def smooth(self, probs: Tensor, z: Tensor, alpha: float, temperature: float) -> Tensor:
        if self.z is None or self.p is None:
            return probs
        weights = (z @ self.z.T / temperature).softmax(dim=-1)
        return alpha * probs + (1.0 - alpha) * weights @ self.p

    def push(self, z: Tensor, p: Tensor) -> None:
        z, p = z.detach(), p.detach()
        self.z = z if self.z is None else torch.cat([z, self.z])[: self.size]
        self.p = p if self.p is None else torch.cat([p, self.p])[: self.size]


def graph_contrast(q: Tensor, z_strong: Tensor, z_weak: Tensor, threshold: float, temperature: float) -> Tensor:
    """CoMatch's contrastive loss: the pseudo-label graph W^q as the target of the embedding graph's rows."""
    graph = q @ q.T
    graph.fill_diagonal_(1.0)
    graph = graph * (graph >= threshold)
    graph = graph / graph.sum(dim=1, keepdim=True)
    log_sim = (z_strong @ z_weak.T / temperature).log_softmax(dim=1)
    return -(graph * log_sim).sum(dim=1).mean()


@register_algorithm("comatch")
class CoMatch(LabelerState, Algorithm):
    description = "memory-smoothed pseudo-labels + a graph-contrastive term on the embeddings (Li et al. 2021)"
    Params = CoMatchParams
    roles = ("primary",)
    needs_unlabeled = True

    def __init__(self, models: Mapping[str, nn.Module], params: Any = None) -> None:
        super().__init__(models, params)
        self.labeler = self.params.labeler()
        self.memory = EmbeddingMemory(self.params.memory_size)

    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput:
        require_keys(labeled, ("video", "label"), "labeled", self.name)
        require_keys(unlabeled, ("weak", "strong"), "unlabeled", self.name)
        p = self.params
        batch = mix_labeled(labeled["video"], labeled["label"], p.labeled_mixup)
        ramp = unlabeled_ramp(self.steps_done, p.unsup_warmup, p.unsup_rampup)
        if ramp == 0.0:
            return warmup_step(self.models, batch, p.label_smoothing)
        model = self.models["primary"]
        teacher = self.ema.get("primary") if p.ema_teacher else None
        n_lab = batch.video.shape[0]
        strong = swap_view_backgrounds(unlabeled["strong"], p.background_swap, p.foreground_ratio)
        with head_inputs(model) as student_feats:
            logits_lab, logits_strong = model(torch.cat([batch.video, strong])).split([n_lab, strong.shape[0]])
        labeler_net = teacher if teacher is not None else model
        with torch.no_grad(), head_inputs(labeler_net) as weak_feats:
            logits_weak = labeler_net(unlabeled["weak"]).float()
        z_lab, z_strong = _unit(student_feats[0]).split([n_lab, logits_strong.shape[0]])
        z_weak = _unit(weak_feats[0])
        sup = labeled_loss(logits_lab, batch, p.label_smoothing)
        with torch.no_grad():
            probs = logits_weak.softmax(dim=-1)
            # The labeler's distribution alignment, when on, applies to the smoothed q.
            targets = self.labeler(self.memory.smooth(probs, z_weak, p.alpha, p.temperature).clamp_min(1e-12).log())
            z_new, p_new = z_weak, probs
            if batch.lam == 1.0:  # a mixed labeled clip has no one-hot target to remember
                one_hot = F.one_hot(batch.labels_a, probs.shape[1]).to(probs.dtype)
                z_new, p_new = torch.cat([z_weak, z_lab.detach()]), torch.cat([probs, one_hot])
            self.memory.push(z_new, p_new)
        unsup = masked_cross_entropy(logits_strong, targets.hard, targets.mask)
        contrast = graph_contrast(targets.probs, z_strong, z_weak, p.contrast_threshold, p.temperature)
        loss = sup + ramp * (p.lambda_u * unsup + p.lambda_c * contrast)
        metrics = {
            "loss/total": loss.detach(), "unsup_weight": loss.new_tensor(ramp),
            "loss/sup_primary": sup.detach(), "loss/unsup_primary": unsup.detach(),
            "loss/contrast_primary": contrast.detach(),
            "pseudo/mask_rate_primary": targets.mask.mean(),
            "pseudo/threshold_mean_primary": targets.thresholds.float().mean(),
        }
        return StepOutput(loss=loss, metrics=metrics, pseudo={"primary": (targets.hard, targets.confident)},
                          logits_weak={"primary": logits_weak.detach()})
