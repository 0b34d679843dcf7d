"""Stochastic depth (Huang et al. 2016) for the residual 3D models: Noisy Student's model noise.

`add_stochastic_depth(model, p)` drops each residual block's residual branch per sample ("row" mode of
torchvision.ops.StochasticDepth, which rescales kept samples by 1 / (1 - rate)), with a rate rising linearly
over depth: block i of N (1-based) gets p * i / N, so the last block gets p. In eval mode every branch is
kept and the model computes exactly what it computed before.

The parameter-free StochasticDepth modules are attached so that the state_dict keys do NOT change: a
checkpoint of a model trained with stochastic depth loads into the same architecture built without it
(Noisy Student's student becomes the next round's un-noised teacher).

Supported blocks: pytorchvideo's ResBlock (r3d_50 and the hub CNNs, x3d_*, slowfast_r50, ...: the drop wraps
`branch2`, the bottleneck), torchvision's
video BasicBlock / Bottleneck (r3d_18, mc3_18, r2plus1d_18: the drop wraps the last conv of the residual path)
and the ViT's Block (vit_*: both residual branches, attention and MLP, at the block's rate; VideoMAE's drop_path).

Try it:
    python -c "import torch; from ssl_core.models import build_model; \
from ssl_core.models.stochastic_depth import add_stochastic_depth; \
m = add_stochastic_depth(build_model('r3d_50_w0.25', num_classes=5), 0.2); print(m(torch.randn(2, 3, 4, 32, 32)).shape)"
"""

from __future__ import annotations

import warnings

from torch import Tensor, nn
from torchvision.models.video.resnet import BasicBlock, Bottleneck
from torchvision.ops import StochasticDepth

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # pytorchvideo's import-time torch.jit.script warning
    from pytorchvideo.models.resnet import ResBlock

from ssl_core.models.vit import Block

_ATTR = "stochastic_depth"


def _apply_stochastic_depth(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    """Forward hook on a residual branch: its output goes through the branch's own StochasticDepth.

    A module-level function reading the module argument (not a closure), so deepcopy and pickle keep working.
    """
    return getattr(module, _ATTR)(output)


def _residual_branches(block: nn.Module) -> list[nn.Module]:
    """The last module of each of a block's residual (non-shortcut) paths; none for a non-residual module."""
    if isinstance(block, ResBlock):
        return [block.branch2]
    if isinstance(block, Bottleneck):
        return [block.conv3]
    if isinstance(block, BasicBlock):
        return [block.conv2]
    if isinstance(block, Block):
        return [block.attn, block.mlp]
    return []


def _attach(branch: nn.Module, drop: StochasticDepth) -> None:
    if isinstance(branch, nn.Sequential):
        branch.append(drop)  # runs last in the Sequential; no parameters, so no new state_dict keys
    else:
        # A child named explicitly would not run by itself (the branch's forward names its own submodules):
        # a forward hook applies it to the branch's output.
        branch.add_module(_ATTR, drop)
        branch.register_forward_hook(_apply_stochastic_depth)


def add_stochastic_depth(model: nn.Module, p: float) -> nn.Module:
    """Add stochastic depth to every residual block of `model`, in place; returns the model.

    p: drop rate of the LAST residual block, in [0, 1); earlier blocks get linearly smaller rates.
    Raises ValueError for a model without supported residual blocks (e.g. small3d) or one that already has it.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"add_stochastic_depth: p must be in [0, 1), got {p}")
    if any(isinstance(m, StochasticDepth) for m in model.modules()):
        raise ValueError(f"add_stochastic_depth: {type(model).__name__} already has stochastic depth")
    blocks = [branches for branches in map(_residual_branches, model.modules()) if branches]
    if not blocks:
        raise ValueError(
            f"add_stochastic_depth: {type(model).__name__} has no residual blocks (pytorchvideo ResBlock, "
            "torchvision BasicBlock / Bottleneck, ViT Block); stochastic depth needs a residual model such as r3d_18, "
            "r3d_50 or vit_tiny"
        )
    n = len(blocks)
    for i, branches in enumerate(blocks, start=1):
        for branch in branches:
            _attach(branch, StochasticDepth(p * i / n, mode="row"))
    return model
