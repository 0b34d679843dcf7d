"""Linear probing, then fine-tuning (LP-FT: Kumar et al., ICLR 2022, "Fine-Tuning can Distort Pretrained
Features and Underperform Out-of-Distribution"): for the first `train.freeze_backbone_steps` optimizer steps only
the classifier head of each model loaded from pretrained weights learns (ssl_core.train_step.held_backbones; a
model built fresh trains from the first step); its backbone keeps the weights and normalisation statistics it was
loaded with, and from then on the whole model fine-tunes.

A few labeled clips fitted end to end rewrite a pretrained backbone before its features have been used: a head
fitted first on the frozen features starts the fine-tuning (and a teacher's first pseudo-labels) from the linear
probe's accuracy instead of a random head's. With `freeze_backbone_steps >= train.iterations` the run is a
linear probe throughout. The head is what `train.head_lr_scale` scales (ssl_core.param_groups: the last
classifier layer, and ViT's final norm).

`train.frozen_stages=K` holds the first K stages (the stem is stage 0; depths as train.layer_decay's) for the
whole run while the later stages and the head learn: partial fine-tuning, the standard middle ground between a
linear probe and the whole network when the labels are few (MMAction2's `frozen_stages`).

Frozen parameters stop requiring gradients, so autograd records nothing through them and the backward pass stops
at the first stage that learns (a step with the whole backbone frozen costs about a forward pass). A model wrapped in
DistributedDataParallel (Ray Train with several workers) keeps them: DDP's reducer expects a gradient for every
parameter it registered, so there the backbone's gradients are computed and dropped after the backward pass.

    python -m ssl_core.loop --config configs/demo.yaml --set model.init=<pretraining run folder> \
        --set train.freeze_backbone_steps=200
    python -m ssl_core.loop --config configs/demo.yaml --set model.init=<pretraining run folder> \
        --set train.frozen_stages=2
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import nn

from ssl_core.param_groups import layer_depths
from ssl_core.unwrap import unwrap


@dataclass
class _Held:
    """Backbone parameters held until step `until` (exclusive), and the normalisation layers that own them."""

    until: float
    parameters: list[nn.Parameter] = field(default_factory=list)
    norms: list[nn.Module] = field(default_factory=list)
    frozen: bool = False


class BackboneFreeze:
    """Holds the backbones of `models` still for the first `steps` steps, and their first `frozen_stages` stages
    (param_groups.layer_depths: the stem is depth 0) for the whole run: call `hold(step)` before the forward pass
    and `drop_gradients()` after the backward pass of each step."""

    def __init__(self, models: Mapping[str, nn.Module], steps: int, *, frozen_stages: int = 0) -> None:
        early, late = _Held(until=math.inf), _Held(until=steps)  # stages below frozen_stages / the rest
        for model in models.values():
            depths, head = layer_depths(model)
            core = unwrap(model)
            owners: dict[str, _Held] = {}  # module name -> the group holding its parameters
            for name, p in core.named_parameters():
                if depths[name] != head:
                    group = early if depths[name] < frozen_stages else late
                    group.parameters.append(p)
                    owners[name.rpartition(".")[0]] = group
            for name, m in core.named_modules():
                if isinstance(m, nn.modules.batchnorm._NormBase) and name in owners:
                    owners[name].norms.append(m)
        self.groups = [g for g in (early, late) if g.parameters and g.until > 0]
        # DDP registers its parameters once, when it wraps the model: toggling requires_grad afterwards would stall
        # its gradient reduction.
        self.toggle = not any(isinstance(m, nn.parallel.DistributedDataParallel) for m in models.values())

    @property
    def parameters(self) -> list[nn.Parameter]:
        return [p for g in self.groups for p in g.parameters]

    @property
    def norms(self) -> list[nn.Module]:
        return [m for g in self.groups for m in g.norms]

    def hold(self, step: int) -> None:
        """Marks `step` (0-based) frozen or not for each group; while frozen a group's normalisation layers use
        (and keep) their running statistics, and they return to training mode at the first step after."""
        for group in self.groups:
            frozen = step < group.until
            if self.toggle and frozen != group.frozen:
                for p in group.parameters:
                    p.requires_grad_(not frozen)
            group.frozen = frozen
            for norm in group.norms:
                norm.train(not frozen)

    def drop_gradients(self) -> None:
        """On a frozen step, the held backbone's gradients (computed under DDP only) go: the optimizer skips those
        parameters (no update, no weight decay, no moment estimates) and the gradient-norm clip does not see
        them."""
        for group in self.groups:
            if group.frozen:
                for p in group.parameters:
                    p.grad = None
