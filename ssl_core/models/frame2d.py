"""frame2d: a per-frame 2D CNN with one residual temporal block on top, for classes defined by how things look.

Each frame goes through the same 2D convolutions (3D kernels of temporal size 1, as TSN's 2D backbone), kept at
1/8 of the input side; then a temporal convolution over the frame features (added to them, so the per-frame
appearance path stays intact), and global max pooling. On the generated appearance-only classes (shape, texture
of a wandering object) small3d's early 3D kernels and 1/16 resolution cannot tell a square from a disc even with
every label, while this layout can; the temporal block keeps motion-only classes learnable (docs/results.md).

Try it:
    python -c "import torch; from ssl_core.models import build_model; \
print(build_model('frame2d', num_classes=5)(torch.randn(2, 3, 8, 64, 64)).shape)"
"""

from __future__ import annotations

from torch import Tensor, nn

from ssl_core.models.registry import register_model

# (channels, spatial stride) of the per-frame layers: 1/8 of the input side at the end.
_FRAME_LAYERS: tuple[tuple[int, int], ...] = ((16, 2), (32, 1), (64, 2), (128, 2))


class Frame2D(nn.Module):
    def __init__(self, *, num_classes: int, width: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for channels, stride in _FRAME_LAYERS:
            out_channels = max(1, round(channels * width))
            layers += [
                nn.Conv3d(in_channels, out_channels, kernel_size=(1, 3, 3), stride=(1, stride, stride),
                          padding=(0, 1, 1), bias=False),
                nn.BatchNorm3d(out_channels),
                nn.ReLU(inplace=True),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        self.temporal = nn.Sequential(
            nn.Conv3d(in_channels, in_channels, kernel_size=(3, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(in_channels),
        )
        self.pool = nn.AdaptiveMaxPool3d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, video: Tensor) -> Tensor:  # (B, 3, T, h, w) -> (B, num_classes)
        frames = self.features(video)
        mixed = (frames + self.temporal(frames)).relu()
        return self.fc(self.dropout(self.pool(mixed).flatten(1)))


@register_model("frame2d", "per-frame 2D CNN at 1/8 resolution + a residual temporal block, for appearance-defined "
                           "classes on CPU (width-scalable)")
def frame2d(*, num_classes: int, width: float = 1.0, dropout: float = 0.0) -> nn.Module:
    return Frame2D(num_classes=num_classes, width=width, dropout=dropout)
