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


def paste_foregrounds(clips: Tensor, stills: Tensor, ratio: float) -> Tensor:
    """clips (N, T, H, W, 3) with stills (N, 1, H, W, 3) -> float (N, T, H, W, 3): each clip's foreground
    (foreground_masks) over its still frame."""
    mask = foreground_masks(clips, ratio)
    return mask * clips.float() + (1 - mask) * stills.float()


def swap_view_backgrounds(views: Tensor, p: float, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """views (B, 3, T, h, w) float: each clip, with probability p, keeps its foreground on the first frame of
    another clip of the batch, held still. Needs B >= 2 and T >= 2 (else unchanged)."""
    b, t = views.shape[0], views.shape[2]
    if p <= 0 or b < 2 or t < 2:
        return views
    chosen = (torch.rand(b, generator=generator) < p).nonzero().squeeze(1)
    if chosen.numel() == 0:
        return views
    donor = (chosen + torch.randint(1, b, (chosen.numel(),), generator=generator)) % b
    frames = views.permute(0, 2, 3, 4, 1)  # (B, T, h, w, 3), the layout of the pretraining's uint8 clips
    picked, donors = chosen.to(views.device), donor.to(views.device)
    merged = paste_foregrounds(frames[picked], frames[donors, :1], ratio)
    out = views.clone()
    out[picked] = merged.permute(0, 4, 1, 2, 3).to(views.dtype)
    return out
