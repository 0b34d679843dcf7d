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

While frozen, the backbone parameters stop requiring gradients, so autograd records nothing through the backbone
and the backward pass reaches the head alone (a frozen step costs about a forward pass). A model wrapped in
DistributedDataParallel (Ray Train with several workers) keeps them: DDP's reducer expects a gradient for every
parameter it registered, so there the backbone's gradients are computed and dropped after the backward pass.

    python -m ssl_core.loop --config configs/demo.yaml --set model.init=<pretraining run folder> \
        --set train.freeze_backbone_steps=200
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ssl_core.param_groups import layer_depths
from ssl_core.unwrap import unwrap


class BackboneFreeze:
    """Holds the backbones of `models` still for the first `steps` steps: call `hold(step)` before the forward
    pass and `drop_gradients()` after the backward pass of each step."""

    def __init__(self, models: Mapping[str, nn.Module], steps: int) -> None:
        self.steps = steps
        self.parameters: list[nn.Parameter] = []
        self.norms: list[nn.Module] = []
        for model in models.values():
            depths, head = layer_depths(model)
            core = unwrap(model)
            owners: set[str] = set()  # modules holding backbone parameters
            for name, p in core.named_parameters():
                if depths[name] != head:
                    self.parameters.append(p)
                    owners.add(name.rpartition(".")[0])
            self.norms += [m for name, m in core.named_modules()
                           if isinstance(m, nn.modules.batchnorm._NormBase) and name in owners]
        # DDP registers its parameters once, when it wraps the model: toggling requires_grad afterwards would stall
        # its gradient reduction.
        self.toggle = not any(isinstance(m, nn.parallel.DistributedDataParallel) for m in models.values())
        self.frozen = False

    def hold(self, step: int) -> None:
        """Marks `step` (0-based) frozen or not; while frozen the backbone normalisation layers use (and keep)
        their running statistics, and they return to training mode at the first step after."""
        frozen = step < self.steps
        if self.toggle and frozen != self.frozen:
            for p in self.parameters:
                p.requires_grad_(not frozen)
        self.frozen = frozen
        for norm in self.norms:
            norm.train(not frozen)

    def drop_gradients(self) -> None:
        """On a frozen step, the backbone's gradients (computed under DDP only) go: the optimizer skips those
        parameters (no update, no weight decay, no moment estimates) and the gradient-norm clip sees the head's
        alone."""
        if self.frozen:
            for p in self.parameters:
                p.grad = None
