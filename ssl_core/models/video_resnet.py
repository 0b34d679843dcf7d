"""torchvision's video ResNets (r3d_18, mc3_18, r2plus1d_18) at any channel width: `r3d_18_w0.25` is r3d_18 with
every stage's channels x 0.25 (CMPL's 1/4-width auxiliary beside an r3d_18 primary).

torchvision's VideoResNet fixes its widths (64 .. 512) in its __init__; `video_resnet` builds the same module tree
with torchvision's own blocks and convolution builders at scaled widths, so state-dict keys, stochastic depth
(ssl_core/models/stochastic_depth.py) and the forward pass are those of torchvision's model. Width 1 is
torchvision's constructor itself.

    python -c "import torch; from ssl_core.models import build_model; \
print(build_model('r2plus1d_18_w0.25', num_classes=5)(torch.randn(1, 3, 4, 32, 32)).shape)"
"""

from __future__ import annotations

from torch import nn
from torchvision.models import get_model
from torchvision.models.video.resnet import (
    BasicBlock,
    Conv2Plus1D,
    Conv3DNoTemporal,
    Conv3DSimple,
    VideoResNet,
)

# name -> the convolution builder of each of the four stages (torchvision's r3d_18 / mc3_18 / r2plus1d_18)
CONV_MAKERS: dict[str, tuple[type[nn.Module], ...]] = {
    "r3d_18": (Conv3DSimple,) * 4,
    "mc3_18": (Conv3DSimple,) + (Conv3DNoTemporal,) * 3,
    "r2plus1d_18": (Conv2Plus1D,) * 4,
}
PLANES = (64, 128, 256, 512)
BLOCKS_PER_STAGE = 2  # the 18-layer models


def _stem(name: str, out: int, width: float) -> nn.Sequential:
    """torchvision's BasicStem / R2Plus1dStem with `out` channels (their indices, so their state-dict keys)."""
    if name == "r2plus1d_18":
        mid = max(1, round(45 * width))
        return nn.Sequential(
            nn.Conv3d(3, mid, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
            nn.Conv3d(mid, out, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(out), nn.ReLU(inplace=True))
    return nn.Sequential(nn.Conv3d(3, out, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
                         nn.BatchNorm3d(out), nn.ReLU(inplace=True))


class NarrowVideoResNet(VideoResNet):
    """VideoResNet with its stage widths x `width`; torchvision's forward and _make_layer."""

    def __init__(self, name: str, *, width: float, num_classes: int) -> None:
        nn.Module.__init__(self)  # not VideoResNet.__init__: it fixes the widths
        planes = [max(1, round(p * width)) for p in PLANES]
        self.inplanes = planes[0]  # read and advanced by _make_layer
        self.stem = _stem(name, planes[0], width)
        self.layer1 = self._make_layer(BasicBlock, CONV_MAKERS[name][0], planes[0], BLOCKS_PER_STAGE, stride=1)
        self.layer2 = self._make_layer(BasicBlock, CONV_MAKERS[name][1], planes[1], BLOCKS_PER_STAGE, stride=2)
        self.layer3 = self._make_layer(BasicBlock, CONV_MAKERS[name][2], planes[2], BLOCKS_PER_STAGE, stride=2)
        self.layer4 = self._make_layer(BasicBlock, CONV_MAKERS[name][3], planes[3], BLOCKS_PER_STAGE, stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.fc = nn.Linear(planes[3], num_classes)
        for m in self.modules():  # VideoResNet's initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


def video_resnet(name: str, *, width: float, num_classes: int, dropout: float) -> nn.Module:
    """torchvision's `name` (r3d_18, mc3_18, r2plus1d_18) at `width`, random init; dropout before the classifier
    as Sequential(Dropout, Linear) (`fc.1`, which model.init maps onto a published `fc`)."""
    if width == 1.0:
        model = get_model(name, weights=None, num_classes=num_classes)
    else:
        model = NarrowVideoResNet(name, width=width, num_classes=num_classes)
    if dropout > 0:
        model.fc = nn.Sequential(nn.Dropout(dropout), model.fc)
    return model
