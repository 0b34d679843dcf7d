"""torchvision's video classifiers, built by torchvision's own constructors (weights=None) so their module trees,
and so their state-dict keys, are the published ones: mc3_18, r2plus1d_18, s3d, mvit_v1_b, mvit_v2_s,
swin3d_t / s / b (r3d_18 is in resnet3d.py, where it was first registered). mc3_18 and r2plus1d_18 take a width
suffix (ssl_core/models/video_resnet.py); the others are width 1 only, and a width suffix on them is a config error.

Each entry's input (crop, resize, mean / std) is read from torchvision's weights enum (`weights.transforms()`);
frames and stride come from the clip length and frame rate its weights were evaluated at (the enum's docs text,
checked against the table below by tests/unit/test_model_zoo.py; stride at ~30 fps Kinetics sources).
A local torchvision state-dict file loads by key (`model.init: path.pth`); `model.init:
torchvision:<model>:<weights>` (e.g. torchvision:swin3d_t:KINETICS400_V1) fetches through the enum on a machine
with internet (ssl_core/models/init.py).

Try it:
    python -c "import torch; from ssl_core.models import build_model; \
print(build_model('swin3d_t', num_classes=5)(torch.randn(1, 3, 4, 32, 32)).shape)"
"""

from __future__ import annotations

from torch import nn
from torchvision.models import get_model, get_model_weights

from ssl_core.models.registry import InputSpec, register_model
from ssl_core.models.video_resnet import CONV_MAKERS, video_resnet

# name -> (frames, stride, description): torchvision's evaluation clips (clip_len, frame_rate 15 -> stride 2,
# 7.5 -> stride 4).
ENTRIES: dict[str, tuple[int, int, str]] = {
    "mc3_18": (16, 2, "torchvision MC3-18 (mixed 3D / 2D convolutions ResNet-18); width-scalable"),
    "r2plus1d_18": (16, 2, "torchvision R(2+1)D-18 (factorised space-time convolutions); width-scalable"),
    "s3d": (128, 2, "torchvision S3D (separable 3D Inception); needs >= 14 frames of 224 px"),
    "mvit_v1_b": (16, 4, "torchvision MViT-v1-B (multiscale ViT); fixed input 16 x 224 px"),
    "mvit_v2_s": (16, 4, "torchvision MViT-v2-S (multiscale ViT, relative positions); fixed input 16 x 224 px"),
    "swin3d_t": (32, 2, "torchvision Video Swin-T (shifted 3D windows)"),
    "swin3d_s": (32, 2, "torchvision Video Swin-S (shifted 3D windows)"),
    "swin3d_b": (32, 2, "torchvision Video Swin-B (shifted 3D windows)"),
}
# Models whose positional tables are sized at construction: only their published input fits.
_FIXED = {"mvit_v1_b", "mvit_v2_s"}


def weights_names(name: str) -> list[str]:
    return [w.name for w in get_model_weights(name)]


def input_spec(name: str, frames: int, stride: int) -> InputSpec:
    """The entry's input, read from its first published weights' transforms and meta."""
    weights = list(get_model_weights(name))
    preset = weights[0].transforms()
    min_side = weights[0].meta.get("min_size", (1, 1))
    return InputSpec(
        frames=frames, stride=stride, crop=int(preset.crop_size[0]), resize=int(min(preset.resize_size)),
        mean=tuple(preset.mean), std=tuple(preset.std),  # type: ignore[arg-type]
        weights=f"torchvision {type(weights[0]).__name__}: " + ", ".join(f"torchvision:{name}:{w.name}"
                                                                            for w in weights),
        min_frames=int(weights[0].meta.get("min_temporal_size", 1)), min_side=int(min(min_side)),
        fixed=name in _FIXED)


def with_dropout(model: nn.Module, attr: str, dropout: float) -> nn.Module:
    """Dropout before the classifier `attr` (an nn.Linear): Sequential(Dropout, Linear), as vidssl's r3d_18 does;
    model.init maps a published `fc.*` / `head.*` onto `fc.1.*` / `head.1.*`."""
    if dropout > 0:
        setattr(model, attr, nn.Sequential(nn.Dropout(dropout), getattr(model, attr)))
    return model


def _builder(name: str):  # noqa: ANN202  (a ModelBuilder)
    def build(*, num_classes: int, width: float = 1.0, dropout: float = 0.0) -> nn.Module:
        if name in CONV_MAKERS:
            return video_resnet(name, width=width, num_classes=num_classes, dropout=dropout)
        if width != 1.0:
            raise ValueError(f"{name} supports width 1 only, got {width}")
        if name in ("s3d", "mvit_v1_b", "mvit_v2_s"):  # the constructor's own dropout before the classifier
            return get_model(name, weights=None, num_classes=num_classes, dropout=dropout)
        model = get_model(name, weights=None, num_classes=num_classes)
        return with_dropout(model, "head" if name.startswith("swin3d") else "fc", dropout)

    return build


for _name, (_frames, _stride, _description) in ENTRIES.items():
    register_model(_name, _description, inputs=input_spec(_name, _frames, _stride),
                   width_scalable=_name in CONV_MAKERS)(_builder(_name))
