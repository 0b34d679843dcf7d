"""pytorchvideo's hub video classifiers, built by pytorchvideo 0.1.5's own hub builders (pretrained=False) so their
module trees, and so their state-dict keys, are the ones its published Kinetics-400 files ({"model_state": ...}
.pyth under https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/) hold: x3d_xs / s / m / l,
slowfast_r50, r2plus1d_r50, csn_r101, mvit_base_16x4, and slow_r50 (an alias of r3d_50, resnet3d.py: the same
module, with the published input spec; r3d_50 keeps taking the run's clip settings, as it did before).

What differs from the hub modules, none of it in the state dict:
  - logits out: X3D's and R(2+1)D's builders end in a softmax, left out here (vidssl's losses take logits);
  - the CNNs' head pools are global (adaptive) averages instead of kernels sized for the published clip, so the
    run's own clip size fits; at the published size both average the same map, so the logits are the same;
  - dropout before the classifier is `model.dropout` (vidssl's noise setting, default 0), not the recipes' 0.5;
  - slowfast_r50 takes vidssl's single (B, 3, T, H, W) clip and builds its two pathways itself: fast = the clip,
    slow = T / 4 frames spread evenly over it, first and last included (alpha = 4; PySlowFast's
    pack_pathway_output, which the published weights were trained with), so the data streams stay unchanged.

Widths: `x3d_*_w<float>` scales X3D's width factor (stem and stage channels; the 2048-wide head projection stays);
the others take width 1 only. mvit_base_16x4's position table is sized at construction: 16 x 224 px only.
A local .pyth file loads by key (`model.init: X3D_M.pyth`); `model.init: hub:x3d_m` downloads the published file
into torch hub's cache on a machine with internet (ssl_core/models/init.py).

Try it:
    python -c "import torch; from ssl_core.models import build_model; \
print(build_model('x3d_xs', num_classes=5)(torch.randn(1, 3, 4, 32, 32)).shape)"
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # pytorchvideo's import-time torch.jit.script warning
    from pytorchvideo.models.hub import csn, r2plus1d, resnet, slowfast, vision_transformers, x3d
    from pytorchvideo.models.hub.csn import csn_r101
    from pytorchvideo.models.hub.r2plus1d import r2plus1d_r50
    from pytorchvideo.models.hub.slowfast import slowfast_r50
    from pytorchvideo.models.hub.vision_transformers import mvit_base_16x4
    from pytorchvideo.models.hub.x3d import x3d_l, x3d_m, x3d_s, x3d_xs

from ssl_core.models.registry import InputSpec, register_model
from ssl_core.models.resnet3d import r3d_50

# pytorchvideo's Kinetics statistics (its hub docs), on [0, 1] pixels; vidssl's own are the same today.
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)
SLOWFAST_ALPHA = 4  # fast frames per slow frame
# X3D's width factor in every published X3D (create_x3d's default; the hub builders leave it); _w<x> multiplies it.
X3D_WIDTH = 2.0
# pytorchvideo's published weights files: the hub modules' own tables.
URLS: dict[str, str] = {
    **x3d.checkpoint_paths,
    "slow_r50": resnet.checkpoint_paths["slow_r50"],
    "slowfast_r50": slowfast.checkpoint_paths["slowfast_r50"],
    "r2plus1d_r50": r2plus1d.checkpoint_paths["r2plus1d_r50"],
    "csn_r101": csn.checkpoint_paths["csn_r101"],
    "mvit_base_16x4": vision_transformers.checkpoint_paths["mvit_base_16x4"],
}


@dataclass(frozen=True)
class Entry:
    """An entry's published clip (pytorchvideo's model zoo: frames x sampling rate; crop: the training crop its
    hub builder sizes the head for; resize: the hub docs' short side) and what the architecture takes."""

    description: str
    frames: int
    stride: int
    crop: int
    resize: int
    min_frames: int = 1
    min_side: int = 1
    frames_multiple: int = 1
    fixed: bool = False


ENTRIES: dict[str, Entry] = {
    "x3d_xs": Entry("pytorchvideo X3D-XS (expanded efficient 3D CNN); width scales", 4, 12, 160, 182),
    "x3d_s": Entry("pytorchvideo X3D-S; width scales", 13, 6, 160, 182),
    "x3d_m": Entry("pytorchvideo X3D-M; width scales", 16, 5, 224, 256),
    "x3d_l": Entry("pytorchvideo X3D-L (deeper: depth factor 5); width scales", 16, 5, 312, 356),
    "slow_r50": Entry("pytorchvideo Slow-only ResNet-50 (= r3d_50, with the published input); width scales", 8, 8,
                      224, 256),
    "slowfast_r50": Entry("pytorchvideo SlowFast R50 (its slow pathway: 1 in 4 frames of the clip, taken inside)",
                          32, 2, 224, 256, min_frames=SLOWFAST_ALPHA, frames_multiple=SLOWFAST_ALPHA),
    "r2plus1d_r50": Entry("pytorchvideo R(2+1)D-50 (factorised space-time convolutions)", 16, 4, 224, 256),
    "csn_r101": Entry("pytorchvideo ir-CSN-101 (channel-separated 3D convolutions)", 32, 2, 224, 256),
    "mvit_base_16x4": Entry("pytorchvideo MViT-B 16x4 (multiscale ViT); fixed input 16 x 224 px", 16, 4, 224, 256,
                            fixed=True),
}


def input_spec(name: str) -> InputSpec:
    e = ENTRIES[name]
    return InputSpec(frames=e.frames, stride=e.stride, crop=e.crop, resize=e.resize, mean=KINETICS_MEAN,
                     std=KINETICS_STD, weights=f"pytorchvideo hub: hub:{name} ({URLS[name]})", min_frames=e.min_frames,
                     min_side=e.min_side, multiple=(e.frames_multiple, 1), fixed=e.fixed)


class SlowFastFromClip(nn.Module):
    """pytorchvideo's SlowFast fed one clip: the pathways are built here (see the module doc). It holds the hub
    module's `blocks` itself, so the state-dict keys stay the published ones."""

    def __init__(self, net: nn.Module, alpha: int = SLOWFAST_ALPHA) -> None:
        super().__init__()
        self.blocks = net.blocks
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        frames = x.shape[2]
        if frames < self.alpha or frames % self.alpha:
            raise ValueError(f"slowfast_r50 takes a multiple of {self.alpha} frames (slow pathway = every "
                             f"{self.alpha}th), got {frames}")
        slow_index = torch.linspace(0, frames - 1, frames // self.alpha, device=x.device).long()
        pathways: Tensor | list[Tensor] = [x.index_select(2, slow_index), x]
        for block in self.blocks:
            pathways = block(pathways)
        return pathways  # type: ignore[return-value]  (the head returns one tensor)


def _set_head_dropout(head: nn.Module, dropout: float) -> None:
    # ResNetBasicHead skips a None dropout; no parameters, so no state-dict keys change.
    head.dropout = nn.Dropout(dropout) if dropout > 0 else None


def _width_one(name: str, width: float) -> None:
    if width != 1.0:
        raise ValueError(f"{name} supports width 1 only, got {width}; x3d_*_w<x>, r3d_50_w<x> or small3d_w<x> "
                         "scale their width")


def _x3d(hub_builder: Callable[..., nn.Module]):  # noqa: ANN202  (a ModelBuilder)
    def build(*, num_classes: int, width: float = 1.0, dropout: float = 0.0) -> nn.Module:
        model = hub_builder(pretrained=False, model_num_class=num_classes, dropout_rate=dropout,
                            width_factor=X3D_WIDTH * width, head_activation=None)
        # create_x3d sizes the head pool for the published clip: a global average fits any clip (ProjectedPool).
        model.blocks[-1].pool.pool = nn.AdaptiveAvgPool3d(1)
        return model

    return build


def _slowfast_r50(*, num_classes: int, width: float = 1.0, dropout: float = 0.0) -> nn.Module:
    _width_one("slowfast_r50", width)
    return SlowFastFromClip(slowfast_r50(pretrained=False, model_num_class=num_classes, dropout_rate=dropout,
                                         head_pool=nn.AdaptiveAvgPool3d))


def _r2plus1d_r50(*, num_classes: int, width: float = 1.0, dropout: float = 0.0) -> nn.Module:
    _width_one("r2plus1d_r50", width)
    model = r2plus1d_r50(pretrained=False, model_num_class=num_classes, head_pool=nn.AdaptiveAvgPool3d,
                         head_activation=None)
    _set_head_dropout(model.blocks[-1], dropout)  # the hub builder fixes its own 0.5
    return model


def _csn_r101(*, num_classes: int, width: float = 1.0, dropout: float = 0.0) -> nn.Module:
    _width_one("csn_r101", width)
    return csn_r101(pretrained=False, model_num_class=num_classes, dropout_rate=dropout,
                    head_pool=nn.AdaptiveAvgPool3d)


def _mvit_base_16x4(*, num_classes: int, width: float = 1.0, dropout: float = 0.0) -> nn.Module:
    _width_one("mvit_base_16x4", width)
    return mvit_base_16x4(pretrained=False, head_num_classes=num_classes, head_dropout_rate=dropout)


_BUILDERS = {
    "x3d_xs": _x3d(x3d_xs), "x3d_s": _x3d(x3d_s), "x3d_m": _x3d(x3d_m), "x3d_l": _x3d(x3d_l), "slow_r50": r3d_50,
    "slowfast_r50": _slowfast_r50, "r2plus1d_r50": _r2plus1d_r50, "csn_r101": _csn_r101,
    "mvit_base_16x4": _mvit_base_16x4,
}
for _name, _entry in ENTRIES.items():
    register_model(_name, _entry.description, inputs=input_spec(_name),
                   width_scalable=_name.startswith("x3d_") or _name == "slow_r50")(_BUILDERS[_name])
