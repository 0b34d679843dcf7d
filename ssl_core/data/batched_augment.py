"""Weak / strong views of a whole batch of clips at once: one kernel per op, one random draw per clip.

The views are those of FixMatch on video (the per-clip torchvision reference is `transforms.augment_per_clip`):
  weak   = random resized crop (area min_scale..1, aspect 3/4..4/3) + horizontal flip;
  strong = weak + RandAugment (randaugment_ops ops per clip, each one of torchvision's 14 at
           randaugment_magnitude of 31 bins, signed ops flipped with probability 1/2) + erasing
           (probability erasing_p, area 2-33 %, aspect 0.3-3.3, filled with 0 before normalisation).
Parameters are drawn per clip on the CPU (`draw_view`, NumPy seeded from a torch.Generator: seeded runs repeat)
and shared by the clip's frames (motion stays intact). The ops run on the clips' device, each once for the batch:
the crop and flip as one bilinear grid_sample (an affine map per clip, frames folded into channels, sampled at
torchvision's resize positions); per RandAugment round the geometric ops as one nearest-neighbour grid_sample of
their clips and each photometric setting (op, sign: the magnitude is fixed) as one call over its clips, in place
where the op allows; the erased boxes as a zero scale in the normalisation.
Differences from the reference: no antialiasing when a crop is shrunk (the default sizes resize crops by
0.9-1.5x: it barely acts there), float instead of uint8 RandAugment (rounding); tests/unit/test_batched_augment.py
checks the crop and each op against torchvision's. On a CPU the cost is memory passes over the batch
(bench.augment_speed, docs/benchmarks.md).

Try it:
    python -c "import torch; from ssl_core.data.transforms import AugmentConfig; \
from ssl_core.data.batched_augment import unlabeled_views; \
w, s = unlabeled_views(torch.randint(0, 256, (4, 8, 80, 80, 3), dtype=torch.uint8), AugmentConfig()); \
print(w.shape, s.shape)"
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
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
_SIGNED = np.array([signed for _, signed in RANDAUGMENT_OPS])
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


def _rng(generator: torch.Generator | None) -> np.random.Generator:
    """A NumPy generator seeded by one draw of the torch generator (the default one when None), so seeded runs
    repeat; NumPy because a draw is ~40 small array ops, each ~1 us in NumPy and ~10 us as a torch op."""
    g = generator if generator is not None else torch.default_generator
    return np.random.default_rng(int(torch.randint(2**62, (1,), generator=g)))


def _first_valid(ok: np.ndarray, *values: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per row, whether any try is valid, and each value at the first valid try (tries along axis 1)."""
    first = ok.argmax(axis=1)
    rows = np.arange(ok.shape[0])
    return ok.any(axis=1), [v[rows, first] for v in values]


def _crop_boxes(n: int, height: int, width: int, min_scale: float, rng: np.random.Generator) -> np.ndarray:
    """RandomResizedCrop's boxes (torchvision's draw: 10 tries of area and log-aspect, then the centre)."""
    area = height * width * rng.uniform(min_scale, 1.0, (n, _TRIES))
    ratio = np.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3), (n, _TRIES)))
    w = np.round(np.sqrt(area * ratio)).astype(np.int64)
    h = np.round(np.sqrt(area / ratio)).astype(np.int64)
    found, (h, w) = _first_valid((w > 0) & (w <= width) & (h > 0) & (h <= height), h, w)
    in_ratio = width / height  # the fallback: the whole frame, its aspect clamped to 3/4..4/3
    h = np.where(found, h, height if in_ratio >= 3 / 4 else round(width / (3 / 4)))
    w = np.where(found, w, width if in_ratio <= 4 / 3 else round(height * 4 / 3))
    return np.stack([rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w], axis=1)


def _erase_boxes(n: int, side: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """RandomErasing's boxes (scale 0.02-0.33, aspect 0.3-3.3, 10 tries); height 0 where not erased."""
    apply = rng.random(n) < p
    area = side * side * rng.uniform(0.02, 0.33, (n, _TRIES))
    aspect = np.exp(rng.uniform(math.log(0.3), math.log(3.3), (n, _TRIES)))
    h = np.round(np.sqrt(area * aspect)).astype(np.int64)
    w = np.round(np.sqrt(area / aspect)).astype(np.int64)
    found, (h, w) = _first_valid((h < side) & (w < side), h, w)
    keep = apply & found
    h, w = np.where(keep, h, 0), np.where(keep, w, 0)
    return np.stack([rng.integers(0, side - h + 1), rng.integers(0, side - w + 1), h, w], axis=1)


def draw_view(n: int, height: int, width: int, cfg: AugmentConfig, *, strong: bool,
              generator: torch.Generator | None = None) -> ViewParams:
    """Random parameters of one view for n clips of (height, width) frames."""
    rng = _rng(generator)
    crop = _crop_boxes(n, height, width, cfg.min_scale, rng)
    flip = (rng.random(n) < 0.5) & cfg.hflip
    rounds = cfg.randaugment_ops if strong else 0
    ops = rng.integers(0, len(RANDAUGMENT_OPS), (n, rounds))
    signs = np.where(rng.random((n, rounds)) < 0.5, -1.0, 1.0).astype(np.float32)
    erase = _erase_boxes(n, cfg.crop_size, cfg.erasing_p if strong else 0.0, rng)
    return ViewParams(*(torch.from_numpy(a) for a in (crop, flip, ops, signs, erase)))


def draw_view_per_row(seeds: Sequence[int], height: int, width: int, cfg: AugmentConfig, *, strong: bool
                      ) -> ViewParams:
    """One generator per row seed: a row's view does not depend on which rows share its batch."""
    return ViewParams.cat([draw_view(1, height, width, cfg, strong=strong,
                                     generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def _gray(frames: Tensor) -> Tensor:
    """torchvision's luma of float frames (N, 3, s, s) -> (N, 1, s, s)."""
    r, g, b = frames.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(1)


def _blend_(frames: Tensor, other: Tensor, factor: float) -> Tensor:
    """torchvision's _blend (frames * factor + other * (1 - factor), clamped), in place."""
    return frames.mul_(factor).add_(other, alpha=1.0 - factor).clamp_(0, 1)


def _sharpen_(frames: Tensor, factor: float) -> Tensor:
    """torchvision's adjust_sharpness, in place: the interior blended with its blur by (1s around a 5) / 13, the
    border kept. The kernel as a separable 3x3 box sum plus 4x the centre: torchvision's depthwise conv2d costs
    ~1 ms per call here (oneDNN), the sums ~0.1 ms."""
    rows = frames[..., :-2, :] + frames[..., 1:-1, :] + frames[..., 2:, :]
    inner = frames[..., 1:-1, 1:-1]
    blurred = (rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]).add_(inner, alpha=4).div_(13)
    inner.add_(blurred.sub_(inner), alpha=1.0 - factor)
    return frames.clamp_(0, 1)


def _solarize_(frames: Tensor, threshold: float) -> Tensor:
    """torchvision's solarize (1 - x where x >= threshold), in place: x * (1 - 2s) + s with s in {0, 1} gives x
    and 1 - x exactly, and skips torch.where's CPU kernel (~5x slower than these passes here)."""
    s = frames.ge(threshold).to(frames.dtype)
    return frames.mul_(s.mul(-2).add_(1)).add_(s)


def _posterize_(frames: Tensor, bits: int) -> Tensor:
    """torchvision's posterize of float frames, in place."""
    levels = 1 << bits
    return frames.mul_(levels).floor_().clamp_(0, levels - 1).mul_(1.0 / levels)


def _colour_op(name: str, magnitude: float) -> Callable[[Tensor], Tensor]:
    """torchvision's photometric RandAugment op `name` at a signed magnitude, as its RandAugment applies it, for
    float frames (N, 3, s, s) in [0, 1] that the caller owns: in place where the op is a few passes (no new
    tensor, no copy back; tests/unit/test_batched_augment.py checks each against torchvision's functional op),
    torchvision's own functional op otherwise."""
    ops: dict[str, Callable[[Tensor], Tensor]] = {
        "Brightness": lambda v: v.mul_(1.0 + magnitude).clamp_(0, 1),
        "Color": lambda v: _blend_(v, _gray(v), 1.0 + magnitude),
        "Contrast": lambda v: _blend_(v, _gray(v).mean(dim=(-3, -2, -1), keepdim=True), 1.0 + magnitude),
        "Sharpness": lambda v: _sharpen_(v, 1.0 + magnitude),
        "Posterize": lambda v: _posterize_(v, int(magnitude)),
        "Solarize": lambda v: _solarize_(v, magnitude),
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


def _geometric_maps(ops: np.ndarray, signs: np.ndarray, side: int, level: int) -> np.ndarray:
    """(N, 3, 3) pixel-space forward maps of the geometric ops, as torchvision's RandAugment draws them: ShearX/Y
    about the top-left corner, TranslateX/Y by whole pixels, Rotate about the centre."""
    shear, shift, angle = (signs * _magnitude(name, level, side) for name in ("ShearX", "TranslateX", "Rotate"))
    # torchvision's conventions: a positive shear or angle maps the other way round; int(magnitude) pixels.
    shear, shift, rad = -shear, np.trunc(shift), np.deg2rad(-angle)
    m = np.tile(np.eye(3), (len(ops), 1, 1))
    m[:, 0, 1] = np.where(ops == _OP["ShearX"], shear, 0.0)
    m[:, 1, 0] = np.where(ops == _OP["ShearY"], shear, 0.0)
    m[:, 0, 2] = np.where(ops == _OP["TranslateX"], shift, 0.0)
    m[:, 1, 2] = np.where(ops == _OP["TranslateY"], shift, 0.0)
    rotate = ops == _OP["Rotate"]
    cos, sin, c = np.cos(rad[rotate]), np.sin(rad[rotate]), (side - 1) / 2
    m[rotate, 0] = np.stack([cos, -sin, c - cos * c + sin * c], axis=1)
    m[rotate, 1] = np.stack([sin, cos, c - sin * c - cos * c], axis=1)
    return m


def _sample(x: Tensor, theta: np.ndarray, side: int, **grid_sample: str | bool) -> Tensor:
    """x (N, C, H, W) sampled onto side x side through theta (N, 2, 3): each output position's normalised
    coordinates -> the input's (torch's affine_grid convention). One grid_sample call for the batch."""
    corners = bool(grid_sample.get("align_corners", False))
    grid = F.affine_grid(torch.from_numpy(theta).to(x.device, x.dtype), [x.shape[0], 1, side, side],
                         align_corners=corners)
    return F.grid_sample(x, grid, **grid_sample)


def _geometric(x: Tensor, ops: np.ndarray, signs: np.ndarray, level: int) -> Tensor:
    """The geometric RandAugment ops, one per clip of x (N, C, s, s), as one nearest-neighbour warp (zero fill)."""
    side = x.shape[-1]
    to_unit = np.array([[2 / (side - 1), 0, -1], [0, 2 / (side - 1), -1], [0, 0, 1]])  # pixel -> [-1, 1], corners
    theta = to_unit @ np.linalg.inv(_geometric_maps(ops, signs, side, level)) @ np.linalg.inv(to_unit)
    return _sample(x, theta[:, :2], side, mode="nearest", padding_mode="zeros", align_corners=True)


def _apply_to_rows(x: Tensor, rows: np.ndarray, fn: Callable[[Tensor], Tensor]) -> None:
    """x[rows] = fn(x[rows]) for clips `rows` (ascending) of x, in one call: on x's own slice when the rows are
    one run (most settings hold one clip), else on a gathered copy scattered back."""
    if rows[-1] - rows[0] + 1 == len(rows):
        part = x[rows[0] : rows[-1] + 1]
        done = fn(part)
        if done.data_ptr() != part.data_ptr():  # an op that made a new tensor rather than work in place
            part.copy_(done)
        return
    index = torch.from_numpy(rows).to(x.device)
    x.index_copy_(0, index, fn(x.index_select(0, index)))


def _randaugment_round(x: Tensor, ops: np.ndarray, signs: np.ndarray, cfg: AugmentConfig) -> None:
    """One RandAugment op per clip of x (float (B, T*3, s, s) in [0, 1]), in place: the geometric ops as one
    nearest-neighbour warp of their clips (a matrix per clip), each photometric (op, sign) as one call over the
    frames of its clips (the magnitude is fixed, so a pair is one setting). Clips stay where they are: sorting
    them by setting would cost two passes over the batch per round (there and back), on a CPU more than the
    ops themselves."""
    side = x.shape[-1]
    level = cfg.randaugment_magnitude
    geometric = np.flatnonzero((ops >= _OP["ShearX"]) & (ops <= _OP["Rotate"]))
    if len(geometric):
        _apply_to_rows(x, geometric, lambda v: _geometric(v, ops[geometric], signs[geometric], level))
    key = ops * 2 + ((signs < 0) & _SIGNED[ops])
    for k in np.unique(key[ops > _OP["Rotate"]]):
        name = RANDAUGMENT_OPS[k // 2][0]
        fn = _colour_op(name, (-1.0 if k % 2 else 1.0) * _magnitude(name, level, side))
        _apply_to_rows(x, np.flatnonzero(key == k), lambda v, fn=fn: fn(v.view(-1, 3, side, side)).view(v.shape))


def _kept(boxes: Tensor, side: int, device: torch.device) -> Tensor:
    """(B, 1, 1, side, side) float: 0 inside each clip's erased box (top, left, height, width), 1 elsewhere."""
    top, left, h, w = (v.view(-1, 1, 1, 1, 1) for v in boxes.to(device).unbind(1))
    ys = torch.arange(side, device=device).view(1, 1, 1, side, 1)
    xs = torch.arange(side, device=device).view(1, 1, 1, 1, side)
    return (~((ys >= top) & (ys < top + h) & (xs >= left) & (xs < left + w))).float()


def _crop_theta(crop: np.ndarray, flip: np.ndarray, height: int, width: int) -> np.ndarray:
    """(B, 2, 3) affine_grid maps (align_corners=False) of each clip's crop box, mirrored where flipped: output
    pixel u samples the frame at left + (u + 1/2) * w / side - 1/2, torchvision's resize positions."""
    top, left, h, w = crop.T.astype(np.float64)
    theta = np.zeros((len(crop), 2, 3))
    theta[:, 0, 0] = np.where(flip, -w / width, w / width)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    return theta


def _view(frames: Tensor, t: int, params: ViewParams, cfg: AugmentConfig) -> Tensor:
    """Float frames (B, T*3, H, W) in 0..255 -> one normalised view (B, 3, T, crop, crop)."""
    b, _, height, width = frames.shape
    side = cfg.crop_size
    theta = _crop_theta(params.crop.numpy(), params.flip.numpy(), height, width)
    x = _sample(frames, theta, side, mode="bilinear", padding_mode="border", align_corners=False)
    ops, signs = params.ops.numpy(), params.signs.numpy()
    if ops.shape[1]:
        x.mul_(1 / 255)  # RandAugment's ops work on [0, 1]
    for r in range(ops.shape[1]):
        _randaugment_round(x, ops[:, r], signs[:, r], cfg)
    # Per-channel constants spelled out over a whole frame: broadcast within the frame, they keep the CPU's
    # element-wise loop off its vectorised path (0.54 vs 0.31 ms for 16 clips here).
    mean = torch.tensor(MEAN, device=x.device).view(3, 1, 1).expand(3, side, side).contiguous()
    std = torch.tensor(STD, device=x.device).view(3, 1, 1).expand(3, side, side).contiguous()
    scale = 1 / std if ops.shape[1] else 1 / (255 * std)
    if params.erase[:, 2].any():  # erasing fills 0 before normalisation: a scale of 0 inside the box
        scale = scale * _kept(params.erase, side, x.device)
    out = torch.empty((b, 3, t, side, side), device=x.device)
    # Normalised (and erased) in one pass, written straight into the model's (B, 3, T) layout.
    torch.addcmul(-mean / std, x.view(b, t, 3, side, side), scale, out=out.transpose(1, 2))
    return out


def apply_views(clips: Tensor, params: Sequence[ViewParams], cfg: AugmentConfig) -> list[Tensor]:
    """uint8 clips (B, T, H, W, 3) -> one normalised float view (B, 3, T, crop, crop) per entry of `params`,
    on the clips' device. The clips become float once for all their views."""
    check_clips(clips)
    b, t, height, width, _ = clips.shape
    # Frames folded into channels (one sampling grid per clip serves all its frames); still 0..255: a plain
    # conversion costs half a scaling one, and the scale joins a later pass (the crop is linear).
    frames = torch.empty((b, t, 3, height, width), device=clips.device).copy_(clips.permute(0, 1, 4, 2, 3))
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
