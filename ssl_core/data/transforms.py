"""Augmentation settings, the evaluation view, and the per-clip torchvision.transforms.v2 views.

Clips arrive from the data pipeline as uint8 (B, T, H, W, 3); the helpers here turn them into normalised
float (B, 3, T, h, w) model input. Training views are made batched by `ssl_core.data.batched_augment`; the
per-clip form here (`augment_per_clip`: each clip wrapped as a `tv_tensors.Video`, so v2 draws ONE set of
random parameters per clip and applies it to every frame) is the reference those views follow, the
benchmark's baseline (bench.gpu_step), and what the pretraining views still use. (pytorchvideo.transforms
does not import with this torchvision, hence v2.)

Try it:
    python -c "import torch; from ssl_core.data.transforms import AugmentConfig, eval_view; \
print(eval_view(torch.randint(0, 256, (2, 8, 80, 96, 3), dtype=torch.uint8), AugmentConfig()).shape)"
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from ssl_core.typed_config import require, setting

# Kinetics statistics (pytorchvideo / SlowFast convention), on [0, 1] pixel values.
MEAN: tuple[float, float, float] = (0.45, 0.45, 0.45)
STD: tuple[float, float, float] = (0.225, 0.225, 0.225)
PLACEMENTS = ("auto", "device", "data")
# RandAugment's geometric ops (batched_augment) map pixel corners to [-1, 1]: one pixel has no second corner.
MIN_CROP = 2


@dataclass(frozen=True)
class AugmentConfig:
    crop_size: int = setting(64, "output side h = w of the weak view's random resized crop (<= data.size); small "
                                 "default so CPU runs stay fast")
    min_scale: float = setting(0.5, "smallest crop area fraction: enough jitter without losing small actors")
    hflip: bool = setting(True, "horizontal flip; false when classes depend on direction (a flip swaps left/right)")
    randaugment_ops: int = setting(2, "strong view: RandAugment ops per clip (FixMatch's RandAugment)")
    randaugment_magnitude: int = setting(9, "strong view: RandAugment magnitude, of 31 bins (torchvision's scale)")
    erasing_p: float = setting(0.5, "strong view: probability of Cutout-like random erasing")
    # The GPU does the work on "device"; on CPU-only clusters the data tasks run in parallel with the step.
    placement: str = setting("auto", "where training clips are augmented: device (batched on the training device "
                                     "after the uint8 clips arrive), data (Ray Data CPU tasks, in parallel with the "
                                     "step), auto (device on a GPU, data otherwise); evaluation clips: always device")

    def check(self) -> None:
        require(self.placement in PLACEMENTS, "placement", f"must be one of {PLACEMENTS}, got {self.placement!r}")

    def __post_init__(self) -> None:
        if self.crop_size < MIN_CROP:
            raise ValueError(f"AugmentConfig.crop_size must be >= {MIN_CROP}, got {self.crop_size}")
        if not 0.0 < self.min_scale <= 1.0:
            raise ValueError(f"AugmentConfig.min_scale must be in (0, 1], got {self.min_scale}")
        if not 0.0 <= self.erasing_p <= 1.0:
            raise ValueError(f"AugmentConfig.erasing_p must be in [0, 1], got {self.erasing_p}")


# Every transform below maps a Video uint8 (T, 3, H, W) to float (T, 3, crop, crop) in [0, 1];
# normalisation happens once per batch (augment_per_clip, eval_view).
_TO_FLOAT = v2.ToDtype(torch.float32, scale=True)


def _weak_ops(cfg: AugmentConfig) -> list[v2.Transform]:
    crop = v2.RandomResizedCrop(cfg.crop_size, scale=(cfg.min_scale, 1.0), antialias=True)
    ops: list[v2.Transform] = [crop]
    if cfg.hflip:
        ops.append(v2.RandomHorizontalFlip())
    return ops


def weak_transform(cfg: AugmentConfig) -> v2.Transform:
    return v2.Compose([*_weak_ops(cfg), _TO_FLOAT])


def strong_transform(cfg: AugmentConfig) -> v2.Transform:
    return v2.Compose(
        [
            *_weak_ops(cfg),
            # RandAugment's photometric ops are defined on uint8, so they run before the float conversion.
            v2.RandAugment(num_ops=cfg.randaugment_ops, magnitude=cfg.randaugment_magnitude),
            _TO_FLOAT,
            # Constant fill (0): one box per clip, identical across frames.
            v2.RandomErasing(p=cfg.erasing_p),
        ]
    )


def eval_transform(cfg: AugmentConfig) -> v2.Transform:
    return v2.Compose([v2.Resize(cfg.crop_size, antialias=True), v2.CenterCrop(cfg.crop_size), _TO_FLOAT])


def check_clips(clips: Tensor) -> None:
    if not isinstance(clips, Tensor) or clips.dtype != torch.uint8 or clips.ndim != 5 or clips.shape[-1] != 3:
        shape = tuple(clips.shape) if isinstance(clips, Tensor) else type(clips).__name__
        dtype = clips.dtype if isinstance(clips, Tensor) else None
        raise ValueError(f"clips must be a uint8 tensor (B, T, H, W, 3); got {shape} {dtype}")


def _normalised(frames: Tensor) -> Tensor:  # (B, T, 3, h, w) float in [0, 1] -> (B, 3, T, h, w) normalised
    mean = torch.tensor(MEAN, dtype=frames.dtype, device=frames.device).view(1, 1, 3, 1, 1)
    std = torch.tensor(STD, dtype=frames.dtype, device=frames.device).view(1, 1, 3, 1, 1)
    return ((frames - mean) / std).permute(0, 2, 1, 3, 4).contiguous()


def augment_per_clip(
    clips: Tensor,  # (B, T, H, W, 3) uint8
    transform: v2.Transform,
) -> Tensor:  # (B, 3, T, h, w) float32, normalised
    """Apply `transform` clip by clip (one random draw per clip), stack and normalise."""
    check_clips(clips)
    frames_first = clips.permute(0, 1, 4, 2, 3)  # (B, T, 3, H, W): the layout v2 expects for Video
    return _normalised(torch.stack([transform(tv_tensors.Video(clip)).as_subclass(Tensor) for clip in frames_first]))


def eval_view(
    clips: Tensor,  # (B, T, H, W, 3) uint8
    cfg: AugmentConfig,
) -> Tensor:  # (B, 3, T, crop, crop) float32, normalised
    """Short side -> crop_size, centre crop: deterministic, so the whole batch goes through v2 at once."""
    check_clips(clips)
    b, t = clips.shape[:2]
    frames = clips.permute(0, 1, 4, 2, 3).reshape(b * t, 3, *clips.shape[2:4])
    out = eval_transform(cfg)(frames)
    return _normalised(out.view(b, t, *out.shape[1:]))
