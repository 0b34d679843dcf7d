"""pytorchvideo's own hub modules as the reference vidssl's zoo entries are checked against
(tests/unit/test_pytorchvideo_zoo.py, tests/slow/test_pytorchvideo_zoo_published.py), and the published .pyth layout.

    .venv/bin/python -m pytest -q tests/unit/test_pytorchvideo_zoo.py
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ssl_core.models.pytorchvideo_hub import SLOWFAST_ALPHA

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # pytorchvideo's import-time torch.jit.script warning
    from pytorchvideo.models import hub


def reference(name: str, classes: int) -> nn.Module:
    """pytorchvideo's hub module (random init), logits out: X3D's and R(2+1)D's builders end in a softmax, which
    has no parameters and which vidssl leaves out."""
    kwargs: dict[str, object] = {"head_num_classes" if name.startswith("mvit") else "model_num_class": classes}
    if name.startswith("x3d") or name == "r2plus1d_r50":
        kwargs["head_activation"] = None
    return getattr(hub, name)(pretrained=False, **kwargs).eval()


def reference_logits(name: str, model: nn.Module, clip: Tensor) -> Tensor:
    """pytorchvideo's SlowFast takes [slow, fast], packed as its hub docs (and PySlowFast) do."""
    if name != "slowfast_r50":
        return model(clip)
    frames = clip.shape[2]
    slow = torch.index_select(clip, 2, torch.linspace(0, frames - 1, frames // SLOWFAST_ALPHA).long())
    return model([slow, clip])


def _whole_map(module: nn.Module, args: tuple[Tensor, ...]) -> None:
    module.kernel_size = tuple(args[0].shape[-3:])


def fit_head_pools(model: nn.Module) -> nn.Module:
    """The hub builders size the parameter-free head pools for the published clip (X3D-XS: (4, 5, 5) at
    4 x 160 px): here they cover the whole map of the clip they see, as the builder sizes them for that clip."""
    for module in model.modules():
        if isinstance(module, nn.AvgPool3d):
            module.register_forward_pre_hook(_whole_map)
    return model


def save_pyth(state: dict[str, Tensor], path: Path) -> Path:
    torch.save({"model_state": state, "epoch": 196, "cfg": "TRAIN: ..."}, path)  # the published files' layout
    return path
