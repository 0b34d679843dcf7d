"""Tests for ssl_core.data.batched_augment: the draw's distribution, seeds, per-row draws, each op against
torchvision's, and a batch against its clips one by one."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from ssl_core.data import batched_augment as ba
from ssl_core.data.transforms import MEAN, STD, AugmentConfig


def _frames_of(view: torch.Tensor) -> torch.Tensor:
    """A normalised view (3, T, s, s) -> its frames (T, 3, s, s) in [0, 1]."""
    return view.transpose(0, 1) * STD[0] + MEAN[0]


def test_draws_follow_the_configured_distribution() -> None:
    cfg = AugmentConfig(crop_size=32, min_scale=0.4, randaugment_ops=2, erasing_p=0.3)
    n = 7000
    p = ba.draw_view(n, 48, 64, cfg, strong=True, generator=torch.Generator().manual_seed(0))
    assert p.ops.shape == p.signs.shape == (n, 2)
    counts = torch.bincount(p.ops.flatten(), minlength=len(ba.RANDAUGMENT_OPS)).float()
    expected = 2 * n / len(ba.RANDAUGMENT_OPS)
    assert ((counts - expected).abs() < 0.15 * expected).all(), counts
    assert abs((p.signs < 0).float().mean().item() - 0.5) < 0.03
    assert abs(p.flip.float().mean().item() - 0.5) < 0.03
    assert abs((p.erase[:, 2] > 0).float().mean().item() - 0.3) < 0.03
    top, left, h, w = p.crop.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 48).all() and (left + w <= 64).all()
    area = (h * w).float() / (48 * 64)
    assert area.min() > 0.4 - 0.03 and area.max() <= 1.0
    aspect = w.float() / h.float()
    assert aspect.min() > 3 / 4 - 0.05 and aspect.max() < 4 / 3 + 0.05
    et, el, eh, ew = p.erase[p.erase[:, 2] > 0].unbind(1)
    assert (et + eh <= 32).all() and (el + ew <= 32).all()
    erased = (eh * ew).float() / 32**2
    assert erased.min() > 0.02 - 0.01 and erased.max() < 0.33 + 0.03


def test_weak_draws_have_no_randaugment_or_erasing_and_hflip_off_never_flips() -> None:
    cfg = AugmentConfig(hflip=False)
    p = ba.draw_view(500, 40, 40, cfg, strong=False, generator=torch.Generator().manual_seed(1))
    assert p.ops.shape == (500, 0) and not (p.erase[:, 2] > 0).any() and not p.flip.any()


def test_seeded_views_repeat_and_other_seeds_differ() -> None:
    clips = torch.randint(0, 256, (6, 4, 40, 40, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cfg = AugmentConfig(crop_size=32)

    def views(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return ba.unlabeled_views(clips, cfg, torch.Generator().manual_seed(seed))

    for a, b in zip(views(3), views(3), strict=True):
        assert torch.equal(a, b)
    assert not torch.allclose(views(3)[1], views(4)[1])


def test_a_rows_draw_does_not_depend_on_its_batch() -> None:
    cfg = AugmentConfig(crop_size=32)
    together = ba.draw_view_per_row([11, 12, 13], 40, 40, cfg, strong=True)
    alone = ba.draw_view_per_row([12], 40, 40, cfg, strong=True)
    for field in ba.ViewParams.__dataclass_fields__:
        assert torch.equal(getattr(together, field)[1:2], getattr(alone, field))


def _reference_op(name: str, magnitude: float):
    """torchvision's RandAugment op, written out as its RandAugment applies it."""
    geometric = {
        "ShearX": lambda v: TF.affine(v, angle=0.0, translate=[0, 0], scale=1.0, center=[0, 0],
                                      shear=[math.degrees(math.atan(magnitude)), 0.0]),
        "ShearY": lambda v: TF.affine(v, angle=0.0, translate=[0, 0], scale=1.0, center=[0, 0],
                                      shear=[0.0, math.degrees(math.atan(magnitude))]),
        "TranslateX": lambda v: TF.affine(v, angle=0.0, translate=[int(magnitude), 0], scale=1.0, shear=[0.0, 0.0]),
        "TranslateY": lambda v: TF.affine(v, angle=0.0, translate=[0, int(magnitude)], scale=1.0, shear=[0.0, 0.0]),
        "Rotate": lambda v: TF.rotate(v, angle=magnitude),
    }
    photometric = {
        "Brightness": lambda v: TF.adjust_brightness(v, 1.0 + magnitude),
        "Color": lambda v: TF.adjust_saturation(v, 1.0 + magnitude),
        "Contrast": lambda v: TF.adjust_contrast(v, 1.0 + magnitude),
        "Sharpness": lambda v: TF.adjust_sharpness(v, 1.0 + magnitude),
        "Posterize": lambda v: TF.posterize(v, bits=int(magnitude)),
        "Solarize": lambda v: TF.solarize(v, threshold=magnitude),
        "AutoContrast": TF.autocontrast,
        "Equalize": TF.equalize,
    }
    return {**geometric, **photometric}[name]


@pytest.mark.parametrize("op", range(1, len(ba.RANDAUGMENT_OPS)))
def test_each_op_matches_torchvisions(op: int) -> None:
    name, signed = ba.RANDAUGMENT_OPS[op]
    g = torch.Generator().manual_seed(op)
    clips = torch.randint(0, 256, (1, 3, 32, 32, 3), dtype=torch.uint8, generator=g)
    cfg = AugmentConfig(crop_size=32, randaugment_ops=1)
    frames = clips[0].permute(0, 3, 1, 2).float() / 255
    for sign in (1.0, -1.0) if signed else (1.0,):
        params = ba.ViewParams(crop=torch.tensor([[0, 0, 32, 32]]), flip=torch.tensor([False]),
                               ops=torch.tensor([[op]]), signs=torch.tensor([[sign]]),
                               erase=torch.zeros(1, 4, dtype=torch.long))
        out = _frames_of(ba.apply_view(clips, params, cfg)[0])
        expected = _reference_op(name, sign * ba._magnitude(name, cfg.randaugment_magnitude, 32))(frames)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_a_batch_equals_its_clips_one_by_one() -> None:
    g = torch.Generator().manual_seed(5)
    clips = torch.randint(0, 256, (24, 3, 40, 48, 3), dtype=torch.uint8, generator=g)
    cfg = AugmentConfig(crop_size=32, erasing_p=0.5)
    params = ba.draw_view(24, 40, 48, cfg, strong=True, generator=g)
    batch = ba.apply_view(clips, params, cfg)
    for i in range(24):
        one = ba.ViewParams(*(getattr(params, f)[i : i + 1] for f in ba.ViewParams.__dataclass_fields__))
        torch.testing.assert_close(batch[i : i + 1], ba.apply_view(clips[i : i + 1], one, cfg), atol=1e-5, rtol=0)


def test_erasing_zeroes_the_box_in_every_frame() -> None:
    clips = torch.full((1, 3, 32, 32, 3), 200, dtype=torch.uint8)
    cfg = AugmentConfig(crop_size=32, randaugment_ops=0)
    params = ba.ViewParams(crop=torch.tensor([[0, 0, 32, 32]]), flip=torch.tensor([False]),
                           ops=torch.zeros(1, 0, dtype=torch.long), signs=torch.zeros(1, 0),
                           erase=torch.tensor([[4, 6, 10, 12]]))
    frames = _frames_of(ba.apply_view(clips, params, cfg)[0])
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[4:14, 6:18] = True
    assert torch.allclose(frames[:, :, inside], torch.tensor(0.0), atol=1e-5)
    assert torch.allclose(frames[:, :, ~inside], torch.tensor(200 / 255), atol=1e-5)


@pytest.mark.parametrize("flip", [False, True])
def test_an_enlarged_crop_samples_where_torchvisions_resize_does(flip: bool) -> None:
    """Enlarging, antialiasing does nothing: the crop must equal torchvision's bilinear resize of the box (the
    frame's edges clamped, as torchvision clamps)."""
    g = torch.Generator().manual_seed(7)
    clips = torch.randint(0, 256, (1, 2, 24, 30, 3), dtype=torch.uint8, generator=g)
    cfg = AugmentConfig(crop_size=40, randaugment_ops=0)
    params = ba.ViewParams(crop=torch.tensor([[0, 0, 24, 30]]), flip=torch.tensor([flip]),
                           ops=torch.zeros(1, 0, dtype=torch.long), signs=torch.zeros(1, 0),
                           erase=torch.zeros(1, 4, dtype=torch.long))
    frames = clips[0].permute(0, 3, 1, 2).float() / 255
    expected = TF.resize(frames, [40, 40], antialias=True)
    if flip:
        expected = TF.horizontal_flip(expected)
    torch.testing.assert_close(_frames_of(ba.apply_view(clips, params, cfg)[0]), expected, atol=1e-5, rtol=0)
