"""The auxiliary paired with the primary when model.auxiliary is not set: the table, its fallback, an explicit value
winning, and the resolved name in the stored config and logged params.

    .venv/bin/python -m pytest -q tests/unit/test_auxiliary_pairing.py
"""

from __future__ import annotations

import pytest
import torch

from ssl_core.auxiliary_pairing import FALLBACK, SIBLINGS, paired_auxiliary
from ssl_core.config import ConfigError, load_config, with_overrides
from ssl_core.models import build_model, list_models, registry
from ssl_core.train_step import model_names


@pytest.mark.parametrize(("primary", "auxiliary"), [
    ("small3d", "small3d_w0.5"),  # the default pair, as before
    ("small3d_w2+tg", "small3d_w0.5"),  # by the base name, whatever the primary's width and view
    ("frame2d", "frame2d_w0.5"),
    ("r3d_18", "r3d_18_w0.25"),
    ("r3d_50", "r3d_50_w0.25"),
    ("mc3_18", "mc3_18_w0.25"),
    ("r2plus1d_18", "r2plus1d_18_w0.25"),
    ("vit_b", "vit_s"),
    ("vit_s", "vit_tiny"),
    ("vit_tiny", FALLBACK),  # no smaller ViT
    ("swin3d_b", "swin3d_t"),
    ("mvit_v2_s", "r3d_18_w0.25"),
])
def test_a_primary_without_an_auxiliary_gets_its_sibling(primary: str, auxiliary: str) -> None:
    cfg = load_config(None, [f"model.primary={primary}"])
    assert cfg.model.auxiliary == auxiliary
    assert cfg.flat()["model.auxiliary"] == auxiliary  # the logged params name it
    assert model_names(cfg) == {"primary": primary, "auxiliary": auxiliary}  # CMPL, the default algorithm


def test_every_registered_sibling_builds() -> None:
    registered = {name for name, _ in list_models()}
    for primary in sorted(set(SIBLINGS) & registered):
        with torch.device("meta"):  # the module tree only: vit_s / swin3d_t take seconds to initialise
            build_model(paired_auxiliary(primary), num_classes=3)
    assert build_model("frame2d_w0.5", num_classes=3)(torch.randn(2, 3, 4, 32, 32)).shape == (2, 3)


def test_a_sibling_missing_from_this_build_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A sibling that is not registered (a build without its family) gives the fallback, not an unbuildable name."""
    assert paired_auxiliary("x3d_m") == "x3d_xs"
    monkeypatch.delitem(registry._BUILDERS, "x3d_xs")
    assert paired_auxiliary("x3d_m") == FALLBACK
    assert paired_auxiliary("no_such_model") == FALLBACK  # ModelConfig.check names model.primary


def test_an_explicit_auxiliary_wins_and_the_stored_config_keeps_the_resolved_one() -> None:
    assert load_config(None, ["model.primary=vit_b", "model.auxiliary=small3d_w0.25"]).model.auxiliary == \
        "small3d_w0.25"
    assert load_config(None, ["model.primary=vit_b", "model.auxiliary=null"]).model.auxiliary == "vit_s"
    stored = load_config(None, ["model.primary=r3d_18"]).to_dict()
    assert stored["model"]["auxiliary"] == "r3d_18_w0.25"  # a resumed run builds what was trained
    assert with_overrides(stored, []).model.auxiliary == "r3d_18_w0.25"


def test_a_width_suffix_on_a_width_1_model_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"^model\.auxiliary: model 'swin3d_t_w0\.25': swin3d_t has no width "
                                          r"variants"):
        load_config(None, ["model.auxiliary=swin3d_t_w0.25"])
