"""The small shape every algorithm shares (StepOutput, the Algorithm base) and the checks of its inputs.

An algorithm owns its models (by role, primary first), declares its hyper-parameters as a dataclass and
turns one labeled + unlabeled batch into a loss. It does no device handling, no optimizer stepping and no
backward: the worker loop does those in plain view.

Batches (already augmented and normalised by ssl_core.train_step.make_batches):
    labeled   = {"video": float (B_l, 3, T, h, w), "label": int64 (B_l,)}
    unlabeled = {"weak": float (B_u, 3, T, h, w), "strong": float (B_u, 3, T, h, w)
                 [, "target": float (B_u, C) stored teacher probabilities, when needs_targets]}

Kept below everything else in ssl_core.algorithms (the shared loss pieces, every algorithm and the registry import
it), so that it imports none of them.

Try it:
    python -c "from ssl_core.algorithms.base import check_param; check_param('fixmatch', 'tau', 0.95, 'unit')"
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from ssl_core.algorithms.ema import ema_update, frozen_copy
from ssl_core.unwrap import unwrap


@dataclass
class StepOutput:
    loss: Tensor  # scalar, with grad
    metrics: dict[str, Tensor] = field(default_factory=dict)  # detached scalars, e.g. "loss/sup_primary"
    # role -> (hard pseudo-labels (B_u,) int64, bool mask (B_u,)) of the targets that TAUGHT that role
    pseudo: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)
    logits_weak: dict[str, Tensor] = field(default_factory=dict)  # role -> detached (B_u, C)


class Algorithm(ABC):
    name: ClassVar[str]
    description: ClassVar[str]  # one line
    Params: ClassVar[type]  # dataclass with defaults and a "why" comment per field
    roles: ClassVar[tuple[str, ...]]  # model roles, primary first
    # Roles the worker's optimizer trains; the others (a frozen teacher) are built and loaded by the worker,
    # put in eval mode with requires_grad off, and only called under torch.no_grad() by the algorithm.
    frozen_roles: ClassVar[tuple[str, ...]] = ()
    needs_unlabeled: ClassVar[bool]
    # The unlabeled batch carries stored teacher targets ("target": (B_u, C) class probabilities) read from a
    # pseudo-labeled set (data.pseudo_labels) instead of a live teacher: the Noisy Student workflow's students.
    needs_targets: ClassVar[bool] = False

    def __init__(self, models: Mapping[str, nn.Module], params: Any = None) -> None:
        if params is None:
            params = self.Params()
        if not isinstance(params, self.Params):
            raise TypeError(
                f"{self.name}: params must be {self.Params.__qualname__}, got {type(params).__name__}"
            )
        roles = self.roles_for(params)
        if set(models) != set(roles):
            raise KeyError(f"{self.name}: needs models for roles {list(roles)}, got {sorted(models)}")
        self.models: dict[str, nn.Module] = dict(models)
        self.params = params
        # Optimizer steps done before the current one; the worker loop sets it (from the LR scheduler, which
        # checkpoints it) before every train_step, so warm-up and ramps need no state of their own.
        self.steps_done = 0
        # EMA copies of the trainable models (train.ema_decay): off until configure_ema, empty until created.
        self.ema: dict[str, nn.Module] = {}
        self.ema_decay = 0.0
        self.ema_start = 0

    @classmethod
    def roles_for(cls, params: Any) -> tuple[str, ...]:
        """The model roles these params need: `roles`, unless an option adds a model (FixMatch's TG companion)."""
        return cls.roles

    @abstractmethod
    def train_step(self, labeled: dict[str, Tensor], unlabeled: dict[str, Tensor] | None) -> StepOutput: ...

    def trainable_models(self) -> dict[str, nn.Module]:
        """The models whose parameters the worker's optimizer updates."""
        return {role: m for role, m in self.models.items() if role not in self.frozen_roles}

    def eval_models(self) -> dict[str, nn.Module]:
        """Every model worth evaluating, by name (e.g. Mean Teacher adds its EMA "teacher")."""
        return dict(self.models)

    def after_optimizer_step(self) -> None:  # noqa: B027 (an optional hook, not an abstract one)
        """Called by the worker loop right after optimizer.step() (EMA updates live here); nothing by default."""

    # --- EMA of the trained weights (train.ema_decay), for every algorithm -----------------------------

    def configure_ema(self, decay: float, start: int) -> None:
        """Keep an EMA of every trainable model from optimizer step `start` on (created there as a copy, so
        the average does not remember the random init: SVFormer creates its teacher after warm-up)."""
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"{self.name}: ema_decay must be in [0, 1), got {decay}")
        self.ema_decay, self.ema_start = decay, start

    def update_ema(self) -> None:
        """Called by the worker loop after after_optimizer_step (self.steps_done: the steps before this one)."""
        if self.ema_decay <= 0 or self.steps_done + 1 < self.ema_start:
            return
        for role, model in self.trainable_models().items():
            if role not in self.ema:
                self.ema[role] = frozen_copy(unwrap(model))
            else:
                ema_update(self.ema[role], unwrap(model), self.ema_decay)

    def deployed_models(self) -> dict[str, nn.Module]:
        """eval_models() with the EMA copy in place of each raw model that has one: what is evaluated,
        checkpointed for inference and registered."""
        return {role: self.ema.get(role, model) for role, model in self.eval_models().items()}

    def ema_state_dict(self) -> dict[str, dict[str, Any]]:
        return {role: m.state_dict() for role, m in self.ema.items()}

    def load_ema_state_dict(self, state: Mapping[str, Mapping[str, Any]]) -> None:
        models = self.trainable_models()
        unknown = set(state) - set(models)
        if unknown:
            raise KeyError(f"{self.name}: EMA state for unknown roles {sorted(unknown)}")
        for role, weights in state.items():
            self.ema[role] = frozen_copy(unwrap(models[role]))
            self.ema[role].load_state_dict(weights)

    def state_dict(self) -> dict[str, Any]:
        """Algorithm state beyond the models (EMA weights, class-wise thresholds); none by default."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise KeyError(f"{self.name}: keeps no state, got keys {sorted(state)}")


def require_keys(
    batch: Mapping[str, Tensor] | None, keys: tuple[str, ...], what: str, algorithm: str
) -> None:
    """Clear error for a batch missing keys, instead of a KeyError deep inside a loss."""
    if batch is None:
        raise ValueError(f"{algorithm}: needs an {what} batch with keys {list(keys)}, got None")
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"{algorithm}: {what} batch lacks keys {missing}; it has {sorted(batch)}")


def check_param(algorithm: str, name: str, value: float, rule: str) -> None:
    """Params validation shared by every algorithm: `rule` is "unit" ([0, 1]), "non_negative" or "positive"."""
    ok, text = {
        "unit": (0.0 <= value <= 1.0, "be in [0, 1]"),
        "non_negative": (value >= 0, "be >= 0"),
        "positive": (value > 0, "be > 0"),
    }[rule]
    if not ok:
        raise ValueError(f"{algorithm}.{name} must {text}, got {value}")
