"""The views' contract, for the batched views (ssl_core.data.batched_augment) and the per-clip torchvision reference
(ssl_core.data.transforms): shapes, one random draw per clip, flip switch, view pairing; and the eval view."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from ssl_core.data import batched_augment
from ssl_core.data.transforms import (
    MIN_CROP,
    AugmentConfig,
    augment_per_clip,
    eval_view,
    strong_transform,
    weak_transform,
)

MEAN, STD = 0.45, 0.225


def _normalised(clips: torch.Tensor) -> torch.Tensor:
    """Reference: uint8 (B, T, H, W, 3) -> normalised float (B, 3, T, H, W), computed independently."""
    return (clips.float() / 255.0 - MEAN).div(STD).permute(0, 4, 1, 2, 3)


def _static_clips(b: int, t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Clips whose T frames are identical copies of one random image."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (b, 1, h, w, 3), dtype=torch.uint8, generator=g)
    return image.expand(b, t, h, w, 3).contiguous()


View = Callable[[torch.Tensor, AugmentConfig], torch.Tensor]
# (weak, strong) of each implementation
VIEWS: dict[str, tuple[View, View]] = {
    "batched": (batched_augment.weak_view, batched_augment.strong_view),
    "per_clip": (lambda c, cfg: augment_per_clip(c, weak_transform(cfg)),
                 lambda c, cfg: augment_per_clip(c, strong_transform(cfg))),
}


def _unlabeled_views(impl: str, clips: torch.Tensor, cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    if impl == "batched":
        return batched_augment.unlabeled_views(clips, cfg)
    weak, strong = VIEWS[impl]
    return weak(clips, cfg), strong(clips, cfg)


@pytest.mark.parametrize("impl", VIEWS)
def test_shapes_and_dtypes(impl: str) -> None:
    cfg = AugmentConfig(crop_size=24)
    clips = torch.randint(0, 256, (3, 5, 40, 48, 3), dtype=torch.uint8)
    for out in (*(view(clips, cfg) for view in VIEWS[impl]), eval_view(clips, cfg)):
        assert out.shape == (3, 3, 5, 24, 24)
        assert out.dtype == torch.float32
    weak, strong = _unlabeled_views(impl, clips, cfg)
    assert weak.shape == strong.shape == (3, 3, 5, 24, 24)


@pytest.mark.parametrize("impl", VIEWS)
def test_normalisation_matches_kinetics_stats(impl: str) -> None:
    cfg = AugmentConfig(crop_size=16, min_scale=1.0, hflip=False)
    clips = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8)
    torch.testing.assert_close(VIEWS[impl][0](clips, cfg), _normalised(clips))


@pytest.mark.parametrize("impl", VIEWS)
@pytest.mark.parametrize("strong", [False, True])
def test_all_frames_of_a_clip_get_the_same_augmentation(impl: str, strong: bool) -> None:
    torch.manual_seed(0)
    cfg = AugmentConfig(crop_size=20, min_scale=0.3, erasing_p=1.0)
    out = VIEWS[impl][strong](_static_clips(6, 6, 32, 40), cfg)
    for clip in out:  # (3, T, h, w)
        for t in range(1, clip.shape[1]):
            torch.testing.assert_close(clip[:, t], clip[:, 0], rtol=0, atol=0)


@pytest.mark.parametrize("impl", VIEWS)
@pytest.mark.parametrize("strong", [False, True])
def test_clips_get_different_augmentations(impl: str, strong: bool) -> None:
    torch.manual_seed(0)
    cfg = AugmentConfig(crop_size=20, min_scale=0.3)
    out = VIEWS[impl][strong](_static_clips(1, 2, 32, 40).expand(8, 2, 32, 40, 3).contiguous(), cfg)
    distinct = {tuple(clip.flatten()[::97].tolist()) for clip in out}
    assert len(distinct) >= 7, "eight copies of one clip should get (almost) eight different views"


@pytest.mark.parametrize("impl", VIEWS)
def test_hflip_off_never_flips_and_on_does(impl: str) -> None:
    torch.manual_seed(0)
    # Left half dark, right half bright: a flip is unmistakable.
    clips = torch.zeros(1, 2, 16, 16, 3, dtype=torch.uint8)
    clips[..., 8:, :] = 200
    identity = _normalised(clips)
    flipped = identity.flip(-1)
    weak = VIEWS[impl][0]
    no_flip = AugmentConfig(crop_size=16, min_scale=1.0, hflip=False)
    for _ in range(30):
        torch.testing.assert_close(weak(clips, no_flip), identity)
    with_flip = AugmentConfig(crop_size=16, min_scale=1.0, hflip=True)
    outs = [weak(clips, with_flip) for _ in range(30)]
    assert any(torch.allclose(o, flipped) for o in outs)
    assert all(torch.allclose(o, flipped) or torch.allclose(o, identity) for o in outs)


@pytest.mark.parametrize("impl", VIEWS)
def test_weak_and_strong_views_come_from_the_same_clip(impl: str) -> None:
    torch.manual_seed(0)
    clips = torch.randint(0, 256, (3, 2, 16, 16, 3), dtype=torch.uint8)
    # Geometry switched off and no RandAugment: the only difference left is the erased box.
    cfg = AugmentConfig(crop_size=16, min_scale=1.0, hflip=False, randaugment_ops=0, erasing_p=1.0)
    weak, strong = _unlabeled_views(impl, clips, cfg)
    torch.testing.assert_close(weak, _normalised(clips))
    erased_value = (0.0 - MEAN) / STD
    for i in range(3):
        differs = ((weak[i] - strong[i]).abs() > 1e-4).any(dim=0)  # (T, h, w); float rounding aside
        assert differs.any(), "erasing_p=1 must erase something"
        # Outside the erased box strong equals weak of the SAME clip; inside it holds the fill value.
        erased = strong[i][:, differs]
        torch.testing.assert_close(erased, torch.full_like(erased, erased_value))
        assert torch.equal(differs[0], differs[1])  # the same box in every frame


def test_eval_view_is_deterministic_centre_crop() -> None:
    # Width 48 -> resized 16x24 -> centre 16 columns come from the middle of the frame only.
    clips = torch.zeros(1, 2, 32, 48, 3, dtype=torch.uint8)
    clips[..., 12:36, :] = 255
    cfg = AugmentConfig(crop_size=16)
    a = eval_view(clips, cfg)
    b = eval_view(clips, cfg)
    assert torch.equal(a, b)
    assert a.shape == (1, 3, 2, 16, 16)
    # Centre 16 of 24 resized columns = original columns 8..40; bright band 12..36 sits inside.
    assert a[..., 6:10].min() == pytest.approx((1.0 - MEAN) / STD)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(2, 4, 8, 8, 3),
        torch.zeros(4, 8, 8, 3, dtype=torch.uint8),
        torch.zeros(2, 4, 3, 8, 8, dtype=torch.uint8),
    ],
)
def test_bad_clips_raise(bad: torch.Tensor) -> None:
    for view in (*VIEWS["batched"], *VIEWS["per_clip"], eval_view):
        with pytest.raises(ValueError, match="uint8 tensor"):
            view(bad, AugmentConfig())


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="min_scale"):
        AugmentConfig(min_scale=0.0)
    # A 1-pixel crop used to pass and then divide by zero in the strong view's geometric ops.
    with pytest.raises(ValueError, match="crop_size must be >= 2, got 1"):
        AugmentConfig(crop_size=1)


def test_the_smallest_crop_goes_through_every_view() -> None:
    clips = torch.randint(0, 256, (2, 3, 8, 8, 3), dtype=torch.uint8)
    cfg = AugmentConfig(crop_size=MIN_CROP)
    for view in (*VIEWS["batched"], *VIEWS["per_clip"], eval_view):
        assert view(clips, cfg).shape == (2, 3, 3, MIN_CROP, MIN_CROP)
