"""The optimizer's parameter groups: the fine-tuning controls for pretrained backbones.

`train.head_lr_scale` gives the classifier head (ssl_core.models.heads.head_prefix) lr x scale; `train.layer_decay`
= d < 1 gives a parameter at depth i of L the learning rate lr x d^(L - i): the head at depth L keeps lr, the
embeddings at depth 0 get lr x d^L (BEiT, Bao et al. 2022; VideoMAE's fine-tuning, optim_factory.py
LayerDecayValueAssigner). Both together: the head's lr x scale, the rest lr x d^(L - i).
`train.decay_norm_and_bias: false` leaves biases and normalisation weights (every 1-D parameter) without weight
decay (VideoMAE / timm's `filter_bias_and_bn`; "no bias decay", He et al. 2019, Bag of Tricks, section 3.1).

Depth of a parameter (`layer_depths`): the model's parameters are cut into units in registration order,
  - a top-level module is one unit (torchvision's VideoResNet: stem, layer1 .. layer4, fc), except a top-level
    `blocks` / `features` container, whose items are units (ViT's and pytorchvideo's `blocks.N`, small3d's,
    frame2d's, Swin's and S3D's `features.N`); a unit that is only a normalisation layer joins the unit before it
    (small3d's BatchNorm after its convolution: one conv layer, one unit);
  - the unit holding the classifier head, and a final top-level normalisation layer (ViT's fc_norm, Swin's and
    MViT's norm) are the head, at depth L, as in VideoMAE;
  - the units before a container's first item (ViT's patch_embed, MViT's conv_proj and class token) and parameters
    of the model itself are the embeddings, at depth 0; the other units take depths 1, 2, ... in order (0, 1, ...
    when there are no embeddings).
So vit_b: patch_embed 0, blocks.k k + 1, fc_norm + head 13 (VideoMAE's assignment); r3d_18 / mc3_18 / r2plus1d_18:
stem 0, layerN N, fc 5; r3d_50 (pytorchvideo): blocks.0 (stem) 0 .. blocks.4 4, blocks.5 (head) 5; small3d: its
conv layers 0..3, fc 4; frame2d: conv layers 0..3, temporal 4, fc 5. Each model of a run (CMPL's auxiliary too)
gets its own depths.

    python -c "from ssl_core.models import build_model; from ssl_core.param_groups import layer_depths; \
print(layer_depths(build_model('r3d_18', num_classes=5)))"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ssl_core.models.heads import head_prefix
from ssl_core.unwrap import unwrap

# Top-level containers whose items are a model's stages or blocks.
STAGE_CONTAINERS = ("blocks", "features")
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)  # _NormBase: batch and instance norms
EMBEDDING = ""


def _unit(name: str) -> str:
    """The unit a parameter (dotted name) belongs to, before normalisation units are merged."""
    parts = name.split(".")
    if len(parts) == 1:
        return EMBEDDING
    if parts[0] in STAGE_CONTAINERS and len(parts) > 2:
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def layer_depths(model: nn.Module) -> tuple[dict[str, int], int]:
    """Parameter name -> depth in 0..L, and L (the head's depth); see the module doc for the rule."""
    model = unwrap(model)
    head = head_prefix(model)
    head_unit = _unit(f"{head}.weight".lstrip(".")) if head is not None else None
    units = {name: _unit(name) for name, _ in model.named_parameters()}
    order = list(dict.fromkeys(u for u in units.values() if u != head_unit))
    norms = {u for u in order if u != EMBEDDING and isinstance(model.get_submodule(u), NORMS)}
    while order and order[-1] in norms and "." not in order[-1]:  # a final top-level norm (fc_norm): the head's
        units = {name: head_unit if u == order[-1] else u for name, u in units.items()}
        order.pop()
    merged: dict[str, str] = {}  # a norm unit -> the unit before it (its convolution)
    for before, unit in zip([None, *order], order, strict=False):
        if unit in norms and before is not None:
            merged[unit] = merged.get(before, before)
    stages = [u for u in order if u not in merged]
    # The units before a stage container's first item (patch / position embeddings, MViT's class token) and
    # parameters of the model itself are the embeddings, at depth 0.
    first = next((i for i, u in enumerate(stages) if "." in u), 0)
    embeddings = set(stages[:first]) | ({EMBEDDING} & set(stages))
    stages = [EMBEDDING] * bool(embeddings) + [u for u in stages if u not in embeddings]
    depth = {unit: i for i, unit in enumerate(stages)} | dict.fromkeys(embeddings, 0)
    last = len(stages)
    return {name: last if u == head_unit else depth[merged.get(u, u)] for name, u in units.items()}, last


def is_no_decay(param: torch.Tensor) -> bool:
    """Biases and normalisation weights: VideoMAE's and timm's rule, every 1-D parameter."""
    return param.ndim <= 1


def param_groups(
    models: Mapping[str, nn.Module],
    *,
    lr: float,
    weight_decay: float,
    head_lr_scale: float = 1.0,
    layer_decay: float = 1.0,
    decay_norm_and_bias: bool = True,
) -> list[dict[str, Any]]:
    """The optimizer's groups over every model's parameters: one per (model, depth, decayed or not) that has any,
    each with its `lr`, `weight_decay`, `lr_scale` (lr / train.lr, what `base_lr` divides by) and a `name`
    (role/depth[/no_decay]). With the defaults, one group of every parameter, as a plain optimizer has."""
    if head_lr_scale == 1.0 and layer_decay == 1.0 and decay_norm_and_bias:
        return [{"params": [p for m in models.values() for p in m.parameters()]}]
    groups: dict[tuple[str, int, bool], dict[str, Any]] = {}
    for role, model in models.items():
        depths, last = layer_depths(model)
        for name, param in unwrap(model).named_parameters():
            depth = depths[name]
            scale = head_lr_scale if depth == last else layer_decay ** (last - depth)
            decayed = decay_norm_and_bias or not is_no_decay(param)
            key = (role, depth, decayed)
            if key not in groups:
                groups[key] = {"params": [], "lr": lr * scale, "weight_decay": weight_decay if decayed else 0.0,
                               "lr_scale": scale, "name": f"{role}/{depth}" + ("" if decayed else "/no_decay")}
            groups[key]["params"].append(param)
    return [groups[key] for key in sorted(groups, key=lambda k: (list(models).index(k[0]), k[1], not k[2]))]


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The current learning rate at scale 1 (train.lr x the schedule's factor), whatever the groups' scales: the
    `lr` that runs report."""
    group = optimizer.param_groups[0]
    return float(group["lr"]) / float(group.get("lr_scale", 1.0))
