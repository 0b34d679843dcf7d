"""Tests for the model registry: output shapes, width suffix, errors."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torchvision.models import get_model

from ssl_core.models import build_model, list_models, parse_model_name
from ssl_core.models.video_resnet import NarrowVideoResNet


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# The zoo's large entries (vit_s / vit_b, s3d, mvit, swin3d) take seconds to initialise or 224 px clips only:
# tests/unit/test_model_zoo.py checks their module trees on the meta device and runs their small siblings.
CPU_SIZED = ["small3d", "r3d_18", "r3d_50", "vit_tiny", "mc3_18", "r2plus1d_18"]


@pytest.mark.parametrize("name", [*CPU_SIZED, "small3d_w0.5", "r3d_50_w0.25"])
def test_every_model_gives_logits(name: str) -> None:
    model = build_model(name, num_classes=5).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 4, 32, 32))
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()


def test_registry_holds_the_expected_models() -> None:
    names = {name for name, _ in list_models()}
    assert {"small3d", "r3d_18", "r3d_50", "vit_tiny", "vit_s", "vit_b", "mc3_18", "r2plus1d_18", "s3d", "mvit_v1_b",
            "mvit_v2_s", "swin3d_t", "swin3d_s", "swin3d_b"} <= names
    assert all(description for _, description in list_models())


def test_r3d_50_adaptive_head_takes_any_clip_size() -> None:
    model = build_model("r3d_50_w0.25", num_classes=3).eval()
    with torch.no_grad():
        for shape in [(1, 3, 8, 224, 224), (1, 3, 8, 64, 64), (1, 3, 2, 40, 56)]:
            assert model(torch.randn(*shape)).shape == (1, 3)


def test_quarter_width_r3d_50_has_about_a_sixteenth_of_the_params() -> None:
    quarter = _params(build_model("r3d_50_w0.25", num_classes=10))
    ratio = quarter / _params(build_model("r3d_50", num_classes=10))
    assert 1 / 25 < ratio < 1 / 8


def test_small3d_width_scales_channels() -> None:
    full, half = build_model("small3d", num_classes=4), build_model("small3d_w0.5", num_classes=4)
    assert full.fc.in_features == 128 and half.fc.in_features == 64


def test_small3d_ends_in_global_max_pooling() -> None:
    model = build_model("small3d", num_classes=4)
    assert any(isinstance(m, nn.AdaptiveMaxPool3d) for m in model.modules())
    assert not any(isinstance(m, (nn.AdaptiveAvgPool3d, nn.AvgPool3d)) for m in model.modules())


def test_dropout_is_applied() -> None:
    model = build_model("small3d", num_classes=4, dropout=0.5)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules())


def test_parse_model_name() -> None:
    assert parse_model_name("r3d_50_w0.25") == ("r3d_50", 0.25)
    assert parse_model_name("small3d_w2") == ("small3d", 2.0)
    assert parse_model_name("r3d_18") == ("r3d_18", 1.0)


def test_unknown_model_lists_available_names() -> None:
    with pytest.raises(KeyError, match=r"unknown model 'resnet9000'.*r3d_18.*r3d_50.*small3d"):
        build_model("resnet9000", num_classes=3)
    with pytest.raises(KeyError, match="available"):
        build_model("nope_w0.5", num_classes=3)


def test_unsupported_width_raises() -> None:
    for name in ("vit_s_w0.5", "swin3d_t_w0.5+tg", "mvit_v2_s_w2"):
        base = name.split("_w")[0]
        with pytest.raises(ValueError, match=rf"model '{re.escape(name)}': {base} has no width variants"):
            parse_model_name(name)  # what ModelConfig.check calls: the config fails when read, naming the model
    with pytest.raises(ValueError, match="width must be > 0"):
        build_model("small3d_w0", num_classes=3)


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_torchvision_video_resnets_take_a_width(name: str) -> None:
    """A narrower VideoResNet: torchvision's module tree (its keys) with every stage's channels scaled."""
    narrow = build_model(f"{name}_w0.25+tg", num_classes=3, dropout=0.2)
    with torch.device("meta"):
        full = build_model(name, num_classes=3)
    assert narrow.eval()(torch.randn(1, 3, 2, 16, 16)).shape == (1, 3)
    assert narrow.layer4[1].conv2[1].num_features == 128 and narrow.fc[1].in_features == 128
    assert [k.replace("fc.1.", "fc.") for k in narrow.state_dict()] == list(full.state_dict())
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters()) / 10


@pytest.mark.parametrize("name", ["mc3_18", "r2plus1d_18"])  # both stems, all three convolution builders
def test_narrow_video_resnet_at_width_1_is_torchvisions(name: str) -> None:
    torch.manual_seed(0)
    ours = NarrowVideoResNet(name, width=1.0, num_classes=3).state_dict()
    torch.manual_seed(0)
    theirs = get_model(name, weights=None, num_classes=3).state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
