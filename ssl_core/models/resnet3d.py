"""3D ResNets: r3d_18 (torchvision; ssl_core/models/video_resnet.py scales its width) and r3d_50 (pytorchvideo's
slow-only ResNet-50, width-scalable).

CMPL pairs a 3D-ResNet50 primary with `r3d_50_w0.25` (1/4 channel width) as the auxiliary.

Try it:
    python -c "import torch; from ssl_core.models import build_model; \
print(build_model('r3d_50_w0.25', num_classes=101)(torch.randn(1, 3, 8, 64, 64)).shape)"
"""

from __future__ import annotations

import warnings

from torch import nn

with warnings.catch_warnings():
    # pytorchvideo 0.1.5 (its last release) decorates helpers with torch.jit.script, which recent torch
    # deprecates with a FutureWarning at import time; nothing here scripts a model.
    warnings.simplefilter("ignore", FutureWarning)
    from pytorchvideo.models.resnet import create_resnet

from ssl_core.models.registry import register_model
from ssl_core.models.video_resnet import video_resnet


# Its published weights expect 16 x 112 px clips and torchvision's mean / std; r3d_18 keeps taking the run's clip
# settings and vidssl's normalisation, as it did before the zoo, so checkpoints trained with it predict as before.
@register_model("r3d_18", "torchvision R3D-18 (3D ResNet-18), random init; width scales all channels",
                weights="torchvision R3D_18_Weights: torchvision:r3d_18:KINETICS400_V1 (16 x 112 px, torchvision "
                        "mean / std; r3d_18 reads the run's clip settings and vidssl's normalisation)")
def r3d_18(*, num_classes: int, width: float = 1.0, dropout: float = 0.0) -> nn.Module:
    return video_resnet("r3d_18", width=width, num_classes=num_classes, dropout=dropout)


@register_model("r3d_50", "slow-only 3D ResNet-50 (pytorchvideo), random init; width scales all channels")
def r3d_50(*, num_classes: int, width: float = 1.0, dropout: float = 0.0) -> nn.Module:
    stem_dim = max(1, round(64 * width))  # every stage width derives from the stem's (x4, then doubling)
    return create_resnet(
        input_channel=3,
        model_depth=50,
        model_num_class=num_classes,
        dropout_rate=dropout,
        stem_dim_out=stem_dim,
        # Slow-only R50 (pytorchvideo's slow_r50): 2D stem; temporal kernels only in conv_a of the last two
        # stages (the create_resnet default), no temporal striding.
        stem_conv_kernel_size=(1, 7, 7),
        stage_conv_a_kernel_size=((1, 1, 1), (1, 1, 1), (3, 1, 1), (3, 1, 1)),
        # Adaptive head pool instead of the fixed (8, 7, 7) kernel: any clip size (8x224x224, 8x64x64) works.
        head_pool=nn.AdaptiveAvgPool3d,
        head_output_size=(1, 1, 1),
    )
