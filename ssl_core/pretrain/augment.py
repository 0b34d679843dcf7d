"""Pretraining views: strong appearance augmentation drawn independently per clip (torchvision.transforms.v2).

Each clip of a video gets its own random resized crop, optional horizontal flip, colour jitter (brightness,
contrast, saturation, hue) and grayscale, one draw per clip applied to all its frames (a `tv_tensors.Video`),
so two clips of a video share their motion but not their colours or framing: the per-video constants of a
dataset (an actor's colour, the background, the drift) stop identifying the video (a shortcut otherwise).
videomae (masked reconstruction) gets the crop and flip only: its target is the clip's own pixels.

torchvision's v2 Grayscale / RandomGrayscale pass a Video through unchanged (their kernel takes images only),
so the grayscale here is VideoGrayscale.

Colour and framing do not hide a video's scenery (the layout and texture of its background): clips of one
video then match on the background alone and the features learn nothing about the action. The background
swap (`pretrain.background_swap`, FAME: Ding et al., CVPR 2022, "Motion-aware Contrastive Video Representation
Learning via Foreground-background Merging") keeps each chosen clip's moving foreground (the pixels whose frame
differences are largest) and pastes it on another video's still frame, so positives share motion, not scenery.

    python -c "import torch; from ssl_core.data.transforms import AugmentConfig; \
from ssl_core.pretrain.augment import pretrain_views; from ssl_core.pretrain.config import PretrainConfig; \
print(pretrain_views(torch.randint(0, 256, (2, 3, 8, 72, 72, 3), dtype=torch.uint8), AugmentConfig(), \
PretrainConfig()).shape)"
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from ssl_core.data.foreground import paste_foregrounds
from ssl_core.data.transforms import AugmentConfig, augment_per_clip
from ssl_core.pretrain.config import PretrainConfig

# ITU-R 601-2 luma, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)


class VideoGrayscale(nn.Module):
    """With probability p, a whole clip (T, 3, H, W) becomes grayscale (the luma in all three channels)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, video: Tensor) -> Tensor:
        if self.p <= 0 or float(torch.rand(())) >= self.p:
            return video
        frames = video.as_subclass(Tensor)
        weights = torch.tensor(_LUMA, dtype=torch.float32, device=frames.device).view(1, 3, 1, 1)
        luma = (frames.float() * weights).sum(dim=1, keepdim=True)
        if not frames.is_floating_point():
            luma = luma.round().clamp(0, 255)
        gray = luma.to(frames.dtype).expand_as(frames).contiguous()
        return tv_tensors.Video(gray) if isinstance(video, tv_tensors.Video) else gray


def pretrain_transform(aug: AugmentConfig, p: PretrainConfig) -> v2.Transform:
    """uint8 Video (T, 3, H, W) -> float (T, 3, crop, crop) in [0, 1]; normalised later by augment_per_clip."""
    ops: list[nn.Module] = [
        v2.RandomResizedCrop(aug.crop_size, scale=p.crop_scale(), antialias=True),
    ]
    if aug.hflip:
        ops.append(v2.RandomHorizontalFlip())
    colour = p.objective != "videomae"  # videomae's target is the clip itself: crop and flip only
    if colour and p.jitter_p > 0 and (p.color_jitter > 0 or p.hue > 0):
        s = p.color_jitter
        ops.append(v2.RandomApply([v2.ColorJitter(brightness=s, contrast=s, saturation=s, hue=p.hue)], p=p.jitter_p))
    if colour and p.grayscale_p > 0:
        ops.append(VideoGrayscale(p.grayscale_p))
    ops.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(ops)


def swap_backgrounds(clips: Tensor, p: float, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """clips (B, rho, T, H, W, 3) uint8: each clip, with probability p, keeps its foreground (foreground_masks)
    on the first frame of a clip of another video of the batch, held still. Needs B >= 2 (else unchanged)."""
    b, rho = clips.shape[:2]
    if p <= 0 or b < 2:
        return clips
    chosen = torch.rand(b, rho, generator=generator) < p
    if not chosen.any():
        return clips
    # Another video for each clip: an offset of 1..B-1 videos, never the clip's own video.
    donor = (torch.arange(b)[:, None] + torch.randint(1, b, (b, rho), generator=generator)) % b
    flat, donors = clips.flatten(0, 1), donor.flatten()
    idx = chosen.flatten().nonzero().squeeze(1).to(clips.device)
    picked = flat[idx]
    still = clips[donors[idx.cpu()].to(clips.device), 0, :1]  # (n, 1, H, W, 3): a donor's first frame
    merged = paste_foregrounds(picked, still, ratio).round().clamp(0, 255).to(torch.uint8)
    out = flat.clone()
    out[idx] = merged
    return out.view_as(clips)


def pretrain_views(
    clips: Tensor,  # (B, rho, T, H, W, 3) uint8
    aug: AugmentConfig,
    p: PretrainConfig,
) -> Tensor:  # (B, rho, 3, T, crop, crop) float32, normalised
    """Every clip augmented with its own draw of pretrain_transform."""
    if clips.ndim != 6:
        raise ValueError(f"clips must be (B, rho, T, H, W, 3) uint8, got {tuple(clips.shape)}")
    b, rho = clips.shape[:2]
    clips = swap_backgrounds(clips, p.background_swap, p.foreground_ratio)
    views = augment_per_clip(clips.flatten(0, 1), pretrain_transform(aug, p))
    return views.view(b, rho, *views.shape[1:])
