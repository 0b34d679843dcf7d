"""Weak / strong views of a whole batch of clips at once: one kernel per op, one random draw per clip.

The views are those of FixMatch on video (the per-clip torchvision reference is `transforms.augment_per_clip`):
  weak   = random resized crop (area min_scale..1, aspect 3/4..4/3) + horizontal flip;
  strong = weak + RandAugment (randaugment_ops ops per clip, each one of torchvision's 14 at
           randaugment_magnitude of 31 bins, signed ops flipped with probability 1/2) + erasing
           (probability erasing_p, area 2-33 %, aspect 0.3-3.3, filled with 0 before normalisation).
Parameters are drawn per clip on the CPU (`draw_view`, from a torch.Generator: seeded runs repeat) and shared by
the clip's frames (motion stays intact). The ops run on the clips' device, each once for the batch: the crop and
flip as one bilinear warp (kornia, a matrix per clip, frames folded into channels); per RandAugment round the clips
are sorted by (op, sign), the geometric ops then run as one nearest-neighbour warp and each photometric setting as
one torchvision call on its slice (the magnitude is fixed, so an (op, sign) pair is one setting); the erased boxes
as one mask. Differences from the reference: a bilinear crop without antialiasing, float instead of uint8
RandAugment (rounding), nothing else (tests/test_batched_augment.py checks each op against torchvision's).

Try it:
    python -c "import torch; from ssl_core.data.transforms import AugmentConfig; \
from ssl_core.data.batched_augment import unlabeled_views; \
w, s = unlabeled_views(torch.randint(0, 256, (4, 8, 80, 80, 3), dtype=torch.uint8), AugmentConfig()); \
print(w.shape, s.shape)"
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from kornia.geometry.transform import warp_affine
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from ssl_core.data.transforms import MEAN, STD, AugmentConfig, check_clips

# torchvision's RandAugment space, in its order: (name, signed).
RANDAUGMENT_OPS: tuple[tuple[str, bool], ...] = (
    ("Identity", False), ("ShearX", True), ("ShearY", True), ("TranslateX", True), ("TranslateY", True),
    ("Rotate", True), ("Brightness", True), ("Color", True), ("Contrast", True), ("Sharpness", True),
    ("Posterize", False), ("Solarize", False), ("AutoContrast", False), ("Equalize", False),
)
_OP = {name: i for i, (name, _) in enumerate(RANDAUGMENT_OPS)}
_BINS = 31  # torchvision's num_magnitude_bins
_TRIES = 10  # torchvision's attempts at a crop / erase box before its fallback


@dataclass(frozen=True)
class ViewParams:
    """One view's random parameters, a row per clip (CPU tensors)."""

    crop: Tensor  # (B, 4) int64: top, left, height, width of the crop in the decoded frame
    flip: Tensor  # (B,) bool
    ops: Tensor  # (B, R) int64 indices into RANDAUGMENT_OPS; R = 0 for a weak view
    signs: Tensor  # (B, R) float32, +-1
    erase: Tensor  # (B, 4) int64: top, left, height, width in the crop; height 0 = not erased

    @staticmethod
    def cat(parts: Sequence[ViewParams]) -> ViewParams:
        return ViewParams(*(torch.cat([getattr(p, f) for p in parts]) for f in ViewParams.__dataclass_fields__))


def _first_valid(ok: Tensor, values: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """Per row, whether any try is valid, and each value at the first valid try (tries along dim 1)."""
    first = ok.int().argmax(dim=1, keepdim=True)
    return ok.any(dim=1), [v.gather(1, first).squeeze(1) for v in values]


def _offsets(room: Tensor, g: torch.Generator) -> Tensor:
    """Uniform integers in [0, room] per row (torch.randint's range, drawn for a whole column)."""
    return (torch.rand(room.shape, generator=g) * (room + 1)).floor().long().clamp(max=room)


def _crop_boxes(n: int, height: int, width: int, min_scale: float, g: torch.Generator) -> Tensor:
    """RandomResizedCrop's boxes (torchvision's draw: 10 tries of area and log-aspect, then the centre)."""
    area = height * width
    scale = min_scale + (1 - min_scale) * torch.rand(n, _TRIES, generator=g)
    log_lo, log_hi = math.log(3 / 4), math.log(4 / 3)
    ratio = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, _TRIES, generator=g))
    w = torch.sqrt(area * scale * ratio).round().long()
    h = torch.sqrt(area * scale / ratio).round().long()
    found, (h, w) = _first_valid((w > 0) & (w <= width) & (h > 0) & (h <= height), (h, w))
    in_ratio = width / height  # the fallback: the whole frame, its aspect clamped to 3/4..4/3
    fallback_w = width if in_ratio <= 4 / 3 else round(height * 4 / 3)
    fallback_h = height if in_ratio >= 3 / 4 else round(width / (3 / 4))
    h = torch.where(found, h, fallback_h)
    w = torch.where(found, w, fallback_w)
    return torch.stack([_offsets(height - h, g), _offsets(width - w, g), h, w], dim=1)


def _erase_boxes(n: int, side: int, p: float, g: torch.Generator) -> Tensor:
    """RandomErasing's boxes (scale 0.02-0.33, aspect 0.3-3.3, 10 tries); height 0 where not erased."""
    apply = torch.rand(n, generator=g) < p
    area = side * side * (0.02 + 0.31 * torch.rand(n, _TRIES, generator=g))
    log_lo, log_hi = math.log(0.3), math.log(3.3)
    aspect = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(n, _TRIES, generator=g))
    h = torch.sqrt(area * aspect).round().long()
    w = torch.sqrt(area / aspect).round().long()
    found, (h, w) = _first_valid((h < side) & (w < side), (h, w))
    keep = apply & found
    h, w = torch.where(keep, h, 0), torch.where(keep, w, 0)
    return torch.stack([_offsets(side - h, g), _offsets(side - w, g), h, w], dim=1)


def draw_view(n: int, height: int, width: int, cfg: AugmentConfig, *, strong: bool,
              generator: torch.Generator | None = None) -> ViewParams:
    """Random parameters of one view for n clips of (height, width) frames."""
    g = generator if generator is not None else torch.default_generator
    crop = _crop_boxes(n, height, width, cfg.min_scale, g)
    flip = (torch.rand(n, generator=g) < 0.5) & cfg.hflip
    rounds = cfg.randaugment_ops if strong else 0
    ops = torch.randint(len(RANDAUGMENT_OPS), (n, rounds), generator=g)
    signs = torch.where(torch.rand(n, rounds, generator=g) < 0.5, -1.0, 1.0)
    erase = _erase_boxes(n, cfg.crop_size, cfg.erasing_p if strong else 0.0, g)
    return ViewParams(crop, flip, ops, signs, erase)


def draw_view_per_row(seeds: Sequence[int], height: int, width: int, cfg: AugmentConfig, *, strong: bool
                      ) -> ViewParams:
    """One generator per row seed: a row's view does not depend on which rows share its batch."""
    return ViewParams.cat([draw_view(1, height, width, cfg, strong=strong,
                                     generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def _colour_op(name: str, magnitude: float) -> Callable[[Tensor], Tensor]:
    """torchvision's photometric RandAugment op `name` at a signed magnitude, as its RandAugment applies it,
    for a batch of float frames (N, 3, s, s) in [0, 1]."""
    ops: dict[str, Callable[[Tensor], Tensor]] = {
        "Brightness": lambda v: TF.adjust_brightness(v, 1.0 + magnitude),
        "Color": lambda v: TF.adjust_saturation(v, 1.0 + magnitude),
        "Contrast": lambda v: TF.adjust_contrast(v, 1.0 + magnitude),
        "Sharpness": lambda v: TF.adjust_sharpness(v, 1.0 + magnitude),
        "Posterize": lambda v: TF.posterize(v, bits=int(magnitude)),
        "Solarize": lambda v: TF.solarize(v, threshold=magnitude),
        "AutoContrast": TF.autocontrast,
        "Equalize": TF.equalize,
    }
    return ops[name]


def _magnitude(name: str, level: int, side: int) -> float:
    """torchvision's value of op `name` at bin `level` of 31 (unsigned)."""
    scale = level / (_BINS - 1)
    ranges = {"ShearX": 0.3, "ShearY": 0.3, "TranslateX": 150 / 331 * side, "TranslateY": 150 / 331 * side,
              "Rotate": 30.0, "Brightness": 0.9, "Color": 0.9, "Contrast": 0.9, "Sharpness": 0.9}
    if name in ranges:
        return ranges[name] * scale
    if name == "Posterize":
        return float(round(8 - level / ((_BINS - 1) / 4)))
    if name == "Solarize":
        return 1.0 - scale
    return 0.0


def _geometric_matrices(ops: Tensor, signs: Tensor, side: int, level: int) -> Tensor:
    """(N, 2, 3) pixel-space forward maps of the geometric ops, as torchvision's RandAugment draws them: ShearX/Y
    about the top-left corner, TranslateX/Y by whole pixels, Rotate about the centre."""
    shear, shift, angle = (signs * _magnitude(name, level, side) for name in ("ShearX", "TranslateX", "Rotate"))
    # torchvision's conventions: a positive shear or angle maps the other way round; int(magnitude) pixels.
    shear, shift, angle = -shear, shift.trunc(), -angle
    m = torch.zeros(ops.shape[0], 2, 3, device=ops.device)
    m[:, 0, 0] = m[:, 1, 1] = 1.0
    m[:, 0, 1] = torch.where(ops == _OP["ShearX"], shear, 0.0)
    m[:, 1, 0] = torch.where(ops == _OP["ShearY"], shear, 0.0)
    m[:, 0, 2] = torch.where(ops == _OP["TranslateX"], shift, 0.0)
    m[:, 1, 2] = torch.where(ops == _OP["TranslateY"], shift, 0.0)
    rotate = ops == _OP["Rotate"]
    if rotate.any():
        rad = torch.deg2rad(angle[rotate])
        cos, sin, c = torch.cos(rad), torch.sin(rad), (side - 1) / 2
        m[rotate] = torch.stack([torch.stack([cos, -sin, c - cos * c + sin * c], 1),
                                 torch.stack([sin, cos, c - sin * c - cos * c], 1)], 1)
    return m


def _randaugment_round(x: Tensor, ops: Tensor, signs: Tensor, cfg: AugmentConfig) -> tuple[Tensor, Tensor]:
    """One RandAugment op per clip of x (float (B, T*3, s, s) in [0, 1]): (the clips reordered by op and sign,
    with their ops applied; the order, as indices into x).

    Sorting the clips by (op, sign) makes each setting a contiguous slice, changed in place: the geometric
    ops run as one nearest-neighbour warp (kornia, a matrix per clip) and each photometric (op, sign) as one
    torchvision call over the frames of its clips (the magnitude is fixed, so a pair is one setting)."""
    b, c, side, _ = x.shape
    t = c // 3
    signed = torch.tensor([signed for _, signed in RANDAUGMENT_OPS])
    key = ops * 2 + ((signs < 0) & signed[ops]).long()
    order = key.argsort(stable=True)
    x = x.index_select(0, order.to(x.device))
    counts = torch.bincount(key, minlength=2 * len(RANDAUGMENT_OPS)).tolist()
    starts = [0, *itertools.accumulate(counts)]
    frames = x.view(b * t, 3, side, side)
    first, last = starts[2 * _OP["ShearX"]], starts[2 * _OP["Rotate"] + 2]
    if last > first:
        matrices = _geometric_matrices(ops[order[first:last]], signs[order[first:last]], side,
                                       cfg.randaugment_magnitude).to(x.device)
        x[first:last] = warp_affine(x[first:last], matrices, (side, side), mode="nearest", align_corners=True)
    for k, count in enumerate(counts):
        if count and k // 2 > _OP["Rotate"]:
            name = RANDAUGMENT_OPS[k // 2][0]
            fn = _colour_op(name, (-1.0 if k % 2 else 1.0) * _magnitude(name, cfg.randaugment_magnitude, side))
            rows = slice(starts[k] * t, (starts[k] + count) * t)
            frames[rows] = fn(frames[rows])
    return x, order


def _kept(boxes: Tensor, side: int, device: torch.device) -> Tensor:
    """(B, 1, 1, side, side) float: 0 inside each clip's erased box (top, left, height, width), 1 elsewhere."""
    top, left, h, w = (v.view(-1, 1, 1, 1, 1) for v in boxes.to(device).unbind(1))
    ys = torch.arange(side, device=device).view(1, 1, 1, side, 1)
    xs = torch.arange(side, device=device).view(1, 1, 1, 1, side)
    return (~((ys >= top) & (ys < top + h) & (xs >= left) & (xs < left + w))).float()


def _crop_matrices(crop: Tensor, flip: Tensor, side: int) -> Tensor:
    """(B, 2, 3) pixel-space maps from each clip's crop box (optionally mirrored) onto the side x side view."""
    top, left, h, w = crop.float().unbind(1)
    sx, sy = (side - 1) / (w - 1).clamp(min=1), (side - 1) / (h - 1).clamp(min=1)
    mirror = torch.where(flip, -1.0, 1.0)
    m = torch.zeros(crop.shape[0], 2, 3)
    m[:, 0, 0] = mirror * sx
    m[:, 0, 2] = torch.where(flip, side - 1 + sx * left, -sx * left)
    m[:, 1, 1] = sy
    m[:, 1, 2] = -sy * top
    return m


def _view(frames: Tensor, t: int, params: ViewParams, cfg: AugmentConfig) -> Tensor:
    """Float frames (B, T*3, H, W) in [0, 1] -> one normalised view (B, 3, T, crop, crop)."""
    b, side = frames.shape[0], cfg.crop_size
    matrices = _crop_matrices(params.crop, params.flip, side).to(frames.device)
    x = warp_affine(frames, matrices, (side, side), align_corners=True)
    order = torch.arange(b)
    for r in range(params.ops.shape[1]):
        x, moved = _randaugment_round(x, params.ops[order, r], params.signs[order, r], cfg)
        order = order[moved]
    mean = torch.tensor(MEAN, device=x.device).view(3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(3, 1, 1)
    scale = 1 / std
    if params.erase[:, 2].any():  # erasing fills 0 before normalisation: a scale of 0 inside the box
        scale = scale * _kept(params.erase[order], side, x.device)
    x = torch.addcmul(-mean / std, x.view(b, t, 3, side, side), scale)  # normalised (and erased) in one pass
    if not params.ops.shape[1]:
        return x.transpose(1, 2).contiguous()
    # Back to the clips' order, while making the (B, 3, T, s, s) layout.
    return torch.empty((b, 3, t, side, side), device=x.device).index_copy_(0, order.to(x.device), x.transpose(1, 2))


def apply_views(clips: Tensor, params: Sequence[ViewParams], cfg: AugmentConfig) -> list[Tensor]:
    """uint8 clips (B, T, H, W, 3) -> one normalised float view (B, 3, T, crop, crop) per entry of `params`,
    on the clips' device. The clips become float once for all their views."""
    check_clips(clips)
    b, t, height, width, _ = clips.shape
    # Frames folded into channels (one sampling grid per clip serves all its frames), scaled to [0, 1] in the
    # same pass.
    frames = torch.div(clips.permute(0, 1, 4, 2, 3), 255, out=torch.empty((b, t, 3, height, width),
                                                                           device=clips.device))
    return [_view(frames.view(b, t * 3, height, width), t, p, cfg) for p in params]


def apply_view(clips: Tensor, params: ViewParams, cfg: AugmentConfig) -> Tensor:
    return apply_views(clips, [params], cfg)[0]


def _draw(clips: Tensor, cfg: AugmentConfig, strong: bool, generator: torch.Generator | None) -> ViewParams:
    return draw_view(clips.shape[0], clips.shape[2], clips.shape[3], cfg, strong=strong, generator=generator)


def weak_view(clips: Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> Tensor:
    return apply_view(clips, _draw(clips, cfg, False, generator), cfg)


def strong_view(clips: Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> Tensor:
    return apply_view(clips, _draw(clips, cfg, True, generator), cfg)


def unlabeled_views(clips: Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
                    ) -> tuple[Tensor, Tensor]:
    """Weak and strong views of the SAME decoded clips (FixMatch / CMPL consistency targets)."""
    weak, strong = apply_views(clips, [_draw(clips, cfg, False, generator), _draw(clips, cfg, True, generator)], cfg)
    return weak, strong
