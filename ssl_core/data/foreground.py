"""What moves in a clip (its foreground) and the background swap that keeps it on another video's still frame.

FAME (Ding et al., CVPR 2022): clips of one video share their scenery, a shortcut for any task that matches clips
of a video; pasting a clip's moving pixels on another video's still frame takes the scenery away. Used by the
pretraining views (uint8 clips, ssl_core.pretrain.augment) and by comatch's strong views (augmented float views).

    python -c "import torch; from ssl_core.data.foreground import swap_view_backgrounds; \
print(swap_view_backgrounds(torch.randn(4, 3, 8, 64, 64), 1.0, 0.15).shape)"
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def foreground_masks(clips: Tensor, ratio: float) -> Tensor:
    """clips (N, T, H, W, 3) -> (N, 1, H, W, 1) float 0/1: the `ratio` of each clip's pixels that change most
    (absolute frame differences, averaged over time and channels, smoothed over 9 x 9 pixels)."""
    x = clips.float()
    energy = (x[:, 1:] - x[:, :-1]).abs().mean(dim=(1, 4))  # (N, H, W)
    energy = F.avg_pool2d(energy[:, None], 9, stride=1, padding=4, count_include_pad=False)[:, 0]
    keep = max(1, round(ratio * energy[0].numel()))
    threshold = energy.flatten(1).topk(keep, dim=1).values[:, -1]
    return (energy >= threshold[:, None, None]).float()[:, None, :, :, None]


def swap_view_backgrounds(views: Tensor, p: float, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """views (B, 3, T, h, w) float: each clip, with probability p, keeps its foreground on the first frame of
    another clip of the batch, held still. Needs B >= 2 and T >= 2 (else unchanged)."""
    b, t = views.shape[0], views.shape[2]
    if p <= 0 or b < 2 or t < 2:
        return views
    chosen = (torch.rand(b, generator=generator) < p).to(views.device)
    donor = (torch.arange(b) + torch.randint(1, b, (b,), generator=generator)) % b
    mask = foreground_masks(views.permute(0, 2, 3, 4, 1), ratio).permute(0, 4, 1, 2, 3)  # (B, 1, 1, h, w)
    still = views[donor.to(views.device), :, :1]  # (B, 3, 1, h, w)
    merged = mask * views + (1 - mask) * still
    return torch.where(chosen.view(b, 1, 1, 1, 1), merged.to(views.dtype), views)
