"""Confidence thresholds for pseudo-labels, fixed or adaptive per class, plus distribution alignment.

Options shared by fixmatch, cmpl and pseudo_label (Params fields `threshold` and `distribution_alignment`):

- `fixed`: T_c = tau for every class (FixMatch).
- `flexmatch` (Zhang et al. 2021, curriculum pseudo-labeling): sigma_c = how many unlabeled samples are
  predicted as c with confidence >= tau; beta_c = sigma_c / max(max_c sigma_c, N_unused) (the warm-up
  normalisation); T_c = M(beta_c) * tau with M(x) = x / (2 - x).
  APPROXIMATION: FlexMatch keeps the latest prediction of EVERY unlabeled sample (indexed by sample id);
  batches here carry no ids, so sigma_c and N_unused are exponential moving averages (momentum m) of the
  per-batch FRACTIONS of samples confidently predicted as c / not confident at all. They start at
  sigma = 0, unused = 1 (nothing learned yet, as FlexMatch's memory of -1 labels), so thresholds start at 0
  and rise as classes are learned; the memory spans about 1 / (1 - m) batches instead of one epoch.
- `freematch` (Wang et al. 2023, self-adaptive thresholding): global tau_t = EMA of the batch mean of
  max(p) (init 1/C), local p_t(c) = EMA of the batch mean of p(c) (init 1/C);
  T_c = MaxNorm(p_t)(c) * tau_t = p_t(c) / max_c' p_t(c') * tau_t. `tau` is not used (self-adaptive);
  FreeMatch's fairness loss is not included.
- `softmatch` (Chen et al. 2023): no hard cut; each pseudo-label is WEIGHTED by a truncated Gaussian of its
  confidence, w = 1 if max(p) >= mu_t else exp(-(max(p) - mu_t)^2 / (2 sigma_t^2 / n^2)), n = 2 (USB's
  n_sigma), mu_t / sigma_t^2 = EMA of the batch mean / variance of max(p) (init 1/C and 1, as USB). Nearly every
  clip counts from the first step, with a low weight while the model is unsure. `tau` is not used.
- distribution alignment (ReMixMatch, Berthelot et al. 2020): p <- Normalize(p * p_target / p_model), with
  p_model = EMA (momentum m) of the mean prediction on unlabeled data, started at the FIRST batch's mean (as
  USB does: a uniform start keeps DA inert for ~1 / (1 - m) steps), and p_target uniform (or a given class
  prior). Applied BEFORE thresholding; pseudo-labels are argmax of the aligned p.

A sample is kept when max(p) >= T_{argmax p} (weight 1, else 0; softmatch: the Gaussian weight). Statistics
include the current batch (update, then threshold), as USB does.

Synchronisation: when torch.distributed is initialised, the per-batch statistics are all-reduced (sums and
sample counts summed over workers, then divided by the total count: the mean over the global batch, which
equals "sum then divide by world size" when the per-worker batches are equal) BEFORE the EMAs move, so
every worker holds identical state. Every worker must therefore call the policy the same number of times.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ssl_core.algorithms.base import check_param

THRESHOLDS = ("fixed", "flexmatch", "freematch", "softmatch")
SOFTMATCH_N_SIGMA = 2.0


@dataclass
class PseudoTargets:
    probs: Tensor  # (B, C) (aligned) class probabilities, no grad
    max_probs: Tensor  # (B,)
    hard: Tensor  # (B,) int64 argmax
    mask: Tensor  # (B,) float weight of each pseudo-label: {0, 1} (max_probs >= thresholds[hard]), softmatch [0, 1]
    thresholds: Tensor  # (C,) per-class thresholds used for this batch (softmatch: mu_t, full weight above)

    @property
    def confident(self) -> Tensor:  # (B,) bool: the pseudo-labels taught at full weight
        return self.max_probs >= self.thresholds[self.hard]


def global_batch_mean(stats: Tensor, count: int) -> Tensor:
    """Mean over the GLOBAL batch of per-sample statistics already summed locally.

    stats: (K,) local sums over `count` samples. Without torch.distributed: stats / count. With it: all workers'
    sums and counts are summed (one all_reduce) and divided, so every worker gets the same numbers.
    """
    packed = torch.cat([stats.float(), stats.new_tensor([float(count)], dtype=torch.float32)])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    total = packed[-1].clamp_min(1.0)
    return packed[:-1] / total


def flexmatch_thresholds(sigma: Tensor, unused: Tensor, tau: float) -> Tensor:
    """T_c = M(beta_c) tau, beta_c = sigma_c / max(max_c sigma_c, unused), M(x) = x / (2 - x)."""
    denominator = torch.maximum(sigma.max(), unused).clamp_min(1e-12)
    beta = sigma / denominator
    return beta / (2.0 - beta) * tau


def freematch_thresholds(p_t: Tensor, tau_t: Tensor) -> Tensor:
    """T_c = p_t(c) / max(p_t) * tau_t."""
    return p_t / p_t.max().clamp_min(1e-12) * tau_t


def align_distribution(probs: Tensor, p_model: Tensor, p_target: Tensor) -> Tensor:
    """ReMixMatch DA: Normalize(p * p_target / p_model) per row."""
    aligned = probs * (p_target / p_model.clamp_min(1e-12)).to(probs.dtype)
    return aligned / aligned.sum(dim=-1, keepdim=True)


class _Stateful:
    """Lazily sized tensor state (C is known only at the first batch), moved to the batch's device."""

    _state_names: tuple[str, ...] = ()

    def __init__(self, momentum: float) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.state: dict[str, Tensor] = {}

    def _init_state(self, num_classes: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def _ready(self, num_classes: int, device: torch.device) -> None:
        if not self.state:
            self.state = self._init_state(num_classes)
        self.state = {k: v.to(device) for k, v in self.state.items()}
        size = next((v.numel() for v in self.state.values() if v.ndim == 1), num_classes)  # per-class state
        if size != num_classes:
            raise ValueError(f"{type(self).__name__}: state holds {size} classes, logits have {num_classes}")

    def _ema(self, name: str, value: Tensor) -> None:
        self.state[name] = self.momentum * self.state[name] + (1.0 - self.momentum) * value

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self.state.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if set(state) - set(self._state_names) or (state and set(state) != set(self._state_names)):
            raise KeyError(f"{type(self).__name__}: expected keys {list(self._state_names)}, got {sorted(state)}")
        self.state = {k: torch.as_tensor(v).detach().clone().float() for k, v in state.items()}


class ThresholdPolicy(_Stateful):
    """Base: `fixed`, T_c = tau. Subclasses keep EMA statistics (see module docstring)."""

    kind = "fixed"

    def __init__(self, tau: float, momentum: float = 0.999) -> None:
        super().__init__(momentum)
        self.tau = tau

    def update(self, probs: Tensor) -> None:
        """Move the statistics with this batch's (aligned) probabilities; synchronised across workers."""

    def thresholds(self, num_classes: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.full((num_classes,), self.tau, device=device, dtype=dtype)


class FlexMatchThreshold(ThresholdPolicy):
    kind = "flexmatch"
    _state_names = ("sigma", "unused")

    def _init_state(self, num_classes: int) -> dict[str, Tensor]:
        return {"sigma": torch.zeros(num_classes), "unused": torch.ones(())}

    def update(self, probs: Tensor) -> None:
        num_classes = probs.shape[1]
        self._ready(num_classes, probs.device)
        max_probs, hard = probs.float().max(dim=-1)
        confident = max_probs >= self.tau
        counts = torch.zeros(num_classes, device=probs.device).index_add_(
            0, hard[confident], torch.ones(int(confident.sum()), device=probs.device)
        )
        stats = global_batch_mean(torch.cat([counts, (~confident).sum().float().view(1)]), probs.shape[0])
        self._ema("sigma", stats[:-1])
        self._ema("unused", stats[-1])

    def thresholds(self, num_classes: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        self._ready(num_classes, device)
        return flexmatch_thresholds(self.state["sigma"], self.state["unused"], self.tau).to(dtype)


class FreeMatchThreshold(ThresholdPolicy):
    kind = "freematch"
    _state_names = ("tau_t", "p_t")

    def _init_state(self, num_classes: int) -> dict[str, Tensor]:
        return {"tau_t": torch.tensor(1.0 / num_classes), "p_t": torch.full((num_classes,), 1.0 / num_classes)}

    def update(self, probs: Tensor) -> None:
        num_classes = probs.shape[1]
        self._ready(num_classes, probs.device)
        p = probs.float()
        stats = global_batch_mean(torch.cat([p.max(dim=-1).values.sum().view(1), p.sum(dim=0)]), p.shape[0])
        self._ema("tau_t", stats[0])
        self._ema("p_t", stats[1:])

    def thresholds(self, num_classes: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        self._ready(num_classes, device)
        return freematch_thresholds(self.state["p_t"], self.state["tau_t"]).to(dtype)


class SoftMatchWeight(ThresholdPolicy):
    kind = "softmatch"
    _state_names = ("mu_t", "var_t")

    def _init_state(self, num_classes: int) -> dict[str, Tensor]:
        return {"mu_t": torch.tensor(1.0 / num_classes), "var_t": torch.tensor(1.0)}

    def update(self, probs: Tensor) -> None:
        self._ready(probs.shape[1], probs.device)
        max_probs = probs.float().max(dim=-1).values
        mean, mean_sq = global_batch_mean(torch.stack([max_probs.sum(), max_probs.square().sum()]), probs.shape[0])
        count = probs.shape[0]
        # Unbiased variance (as USB's torch.var) from the global first and second moments.
        var = (mean_sq - mean.square()).clamp_min(0.0) * count / max(count - 1, 1)
        self._ema("mu_t", mean)
        self._ema("var_t", var)

    def thresholds(self, num_classes: int, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        self._ready(num_classes, device)
        return self.state["mu_t"].expand(num_classes).to(dtype)

    def weights(self, max_probs: Tensor) -> Tensor:
        gap = (max_probs.float() - self.state["mu_t"]).clamp_max(0.0)
        var = self.state["var_t"].clamp_min(1e-12)
        return torch.exp(-gap.square() / (2.0 * var / SOFTMATCH_N_SIGMA**2)).to(max_probs.dtype)


class DistributionAlignment(_Stateful):
    """ReMixMatch DA with p_model = EMA of the mean unlabeled prediction; p_target uniform unless given."""

    _state_names = ("p_model",)

    def __init__(self, momentum: float = 0.999, p_target: Tensor | None = None) -> None:
        super().__init__(momentum)
        self.p_target = None if p_target is None else p_target.float() / p_target.float().sum()

    def _init_state(self, num_classes: int) -> dict[str, Tensor]:
        return {"p_model": torch.full((num_classes,), 1.0 / num_classes)}

    def __call__(self, probs: Tensor) -> Tensor:
        num_classes = probs.shape[1]
        first = not self.state
        self._ready(num_classes, probs.device)
        batch_mean = global_batch_mean(probs.float().sum(dim=0), probs.shape[0])
        if first:
            self.state["p_model"] = batch_mean  # USB: p_model starts at the first batch's mean
        else:
            self._ema("p_model", batch_mean)
        target = (
            torch.full((num_classes,), 1.0 / num_classes, device=probs.device)
            if self.p_target is None
            else self.p_target.to(probs.device)
        )
        return align_distribution(probs, self.state["p_model"], target)


POLICIES: dict[str, type[ThresholdPolicy]] = {
    "fixed": ThresholdPolicy,
    "flexmatch": FlexMatchThreshold,
    "freematch": FreeMatchThreshold,
    "softmatch": SoftMatchWeight,
}


def make_policy(name: str, tau: float, momentum: float = 0.999) -> ThresholdPolicy:
    if name not in POLICIES:
        raise ValueError(f"unknown threshold policy {name!r}; choose one of {list(POLICIES)}")
    return POLICIES[name](tau, momentum)


class PseudoLabeler:
    """Weak-view logits -> PseudoTargets, with optional DA and an adaptive threshold policy.

    One instance per model whose predictions become targets (CMPL: one per model). With `fixed` and no DA it
    keeps no state and reproduces FixMatch's softmax-argmax-threshold exactly.
    """

    def __init__(
        self, threshold: str = "fixed", tau: float = 0.95, distribution_alignment: bool = False,
        momentum: float = 0.999, p_target: Tensor | None = None,
    ) -> None:
        self.policy = make_policy(threshold, tau, momentum)
        self.da = DistributionAlignment(momentum, p_target) if distribution_alignment else None

    @property
    def stateful(self) -> bool:
        return self.da is not None or self.policy.kind != "fixed"

    @torch.no_grad()
    def __call__(self, logits_weak: Tensor) -> PseudoTargets:
        probs = logits_weak.detach().softmax(dim=-1)
        if self.da is not None:
            probs = self.da(probs)
        self.policy.update(probs)
        thresholds = self.policy.thresholds(probs.shape[1], probs.device, probs.dtype)
        max_probs, hard = probs.max(dim=-1)
        if isinstance(self.policy, SoftMatchWeight):
            mask = self.policy.weights(max_probs)
        else:
            mask = (max_probs >= thresholds[hard]).to(max_probs.dtype)
        return PseudoTargets(probs, max_probs, hard, mask, thresholds)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.policy.kind != "fixed":
            state["threshold"] = {"kind": self.policy.kind, **self.policy.state_dict()}
        if self.da is not None:
            state["distribution_alignment"] = self.da.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        expected = {"threshold"} if self.policy.kind != "fixed" else set()
        if self.da is not None:
            expected.add("distribution_alignment")
        if set(state) - expected:
            raise KeyError(f"PseudoLabeler: unexpected state keys {sorted(set(state) - expected)}")
        if "threshold" in state:
            threshold = dict(state["threshold"])
            kind = threshold.pop("kind", None)
            if kind != self.policy.kind:
                raise ValueError(f"PseudoLabeler: state is for threshold {kind!r}, this one is {self.policy.kind!r}")
            self.policy.load_state_dict(threshold)
        if "distribution_alignment" in state:
            self.da.load_state_dict(state["distribution_alignment"])


def validate_threshold_options(algorithm: str, threshold: str, distribution_alignment: bool, momentum: float) -> None:
    """Params.__post_init__ helper for the `threshold`, `distribution_alignment` and `stats_momentum` fields."""
    if threshold not in THRESHOLDS:
        raise ValueError(f"{algorithm}.threshold must be one of {list(THRESHOLDS)}, got {threshold!r}")
    if not isinstance(distribution_alignment, bool):
        raise ValueError(f"{algorithm}.distribution_alignment must be a bool, got {distribution_alignment!r}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"{algorithm}.stats_momentum must be in [0, 1), got {momentum}")


@dataclass(frozen=True)
class PseudoLabelOptions:
    """The pseudo-label options of fixmatch, cmpl and pseudo_label: a Params base giving the fields, their check
    and the PseudoLabeler they describe. A subclass may re-declare `tau` (same default) to document its own use."""

    tau: float = 0.95  # confidence threshold: only confident pseudo-labels teach
    # fixed | flexmatch | freematch | softmatch: class-wise adaptive thresholds or Gaussian weights
    threshold: str = "fixed"
    distribution_alignment: bool = False  # ReMixMatch DA of p before thresholding: counters class imbalance
    stats_momentum: float = 0.999  # EMA momentum of the adaptive-threshold / DA statistics (~1000-batch memory)

    def check_pseudo_labels(self, algorithm: str) -> None:
        check_param(algorithm, "tau", self.tau, "unit")
        validate_threshold_options(algorithm, self.threshold, self.distribution_alignment, self.stats_momentum)

    def labeler(self) -> PseudoLabeler:
        """A fresh labeler: each model whose predictions are labeled needs its own statistics."""
        return PseudoLabeler(self.threshold, self.tau, self.distribution_alignment, self.stats_momentum)


class LabelerState:
    """state_dict / load_state_dict of an algorithm whose one `labeler` is its only state beyond the models
    (fixmatch, comatch): the adaptive-threshold / DA statistics, nothing with the fixed threshold and no DA.
    Listed before Algorithm among the bases, whose empty-state check it falls back to."""

    name: str
    labeler: PseudoLabeler

    def state_dict(self) -> dict[str, Any]:
        return {"labeler": self.labeler.state_dict()} if self.labeler.stateful else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not self.labeler.stateful:
            super().load_state_dict(state)  # type: ignore[misc]  # Algorithm's: no state expected
            return
        unknown = set(state) - {"labeler"}
        if unknown:
            raise KeyError(f"{self.name}: unexpected state keys {sorted(unknown)}")
        self.labeler.load_state_dict(state.get("labeler", {}))
