"""frame2d: per-frame 2D layers (a frame's features depend on that frame only) and a temporal block that makes the
output depend on frame order (so motion-only classes stay learnable).

    .venv/bin/python -m pytest -q tests/unit/test_frame2d.py
"""

from __future__ import annotations

import torch

from ssl_core.models import build_model


def test_shapes_and_width() -> None:
    model = build_model("frame2d", num_classes=5).eval()
    assert model(torch.randn(2, 3, 8, 64, 64)).shape == (2, 5)
    assert build_model("frame2d_w0.5", num_classes=3)(torch.randn(1, 3, 4, 32, 32)).shape == (1, 3)
    assert build_model("frame2d", num_classes=5).fc.in_features == 128
    assert build_model("frame2d_w0.5", num_classes=5).fc.in_features == 64


def test_frame_features_depend_on_their_own_frame_only() -> None:
    torch.manual_seed(0)
    model = build_model("frame2d", num_classes=4).eval()
    video = torch.randn(1, 3, 6, 32, 32)
    changed = video.clone()
    changed[:, :, 0] = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before, after = model.features(video), model.features(changed)
    assert not torch.allclose(before[:, :, 0], after[:, :, 0])
    assert torch.equal(before[:, :, 1:], after[:, :, 1:])  # at 1/8 resolution: 4x4 per frame


def test_the_output_depends_on_frame_order() -> None:
    torch.manual_seed(0)
    model = build_model("frame2d", num_classes=4).eval()
    video = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(model(video), model(video.flip(2)), atol=1e-5)
        # without the temporal block's contribution a max over frames cannot see their order
        model.temporal[1].weight.zero_()
        model.temporal[1].bias.zero_()
        assert torch.allclose(model(video), model(video.flip(2)), atol=1e-5)
