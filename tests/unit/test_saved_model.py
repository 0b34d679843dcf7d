"""The pickle-free model folder (ssl_core/models/saved_model.py): weights.safetensors + spec.json, without MLflow.

    .venv/bin/python -m pytest -q tests/unit/test_saved_model.py
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ssl_core.models import build_model
from ssl_core.models.saved_model import (
    SPEC_FILE,
    WEIGHTS_FILE,
    SavedModelError,
    load_saved_model,
    model_spec,
    save_model_files,
)

META = {"classes": ["a", "b"], "num_frames": 4, "stride": 2, "size": 40, "crop_size": 32}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("small3d_w0.125", num_classes=2).eval()
    save_model_files(tmp_path / "m", model, model_spec("small3d_w0.125", 2, META))
    return tmp_path / "m"


def test_round_trip_rebuilds_from_the_registry(folder: Path) -> None:
    torch.manual_seed(0)
    original = build_model("small3d_w0.125", num_classes=2).eval()
    model, spec = load_saved_model(folder)
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), original(x))
    assert not model.training
    assert (spec["architecture"], spec["width"], spec["meta"], spec["mean"]) == ("small3d_w0.125", 0.125, META,
                                                                              [0.45, 0.45, 0.45])
    with pytest.raises(FileExistsError, match=WEIGHTS_FILE):
        save_model_files(folder, original, spec)


def _edit_spec(folder: Path, **changes: object) -> None:
    spec = json.loads((folder / SPEC_FILE).read_text())
    spec.update(changes)
    (folder / SPEC_FILE).write_text(json.dumps(spec))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / SPEC_FILE).write_text('{"format": "vidssl-saf'), "spec.json: not valid JSON"),
        (lambda f: (f / SPEC_FILE).unlink(), "spec.json: no such file"),
        (lambda f: _edit_spec(f, meta={"classes": ["a", "b"]}), "missing meta.num_frames, meta.stride"),
        (lambda f: _edit_spec(f, format_version=2), "format 'vidssl-safetensors' version 2; this vidssl reads"),
        (lambda f: _edit_spec(f, num_classes=3), "num_classes 3 does not match meta.classes"),
        (lambda f: _edit_spec(f, architecture="resnet9000"), "spec.json: architecture: unknown model 'resnet9000'"),
        (lambda f: _edit_spec(f, architecture="small3d_w0.25"), "weights.safetensors does not fit small3d_w0.25"),
        (lambda f: (f / WEIGHTS_FILE).write_bytes((f / WEIGHTS_FILE).read_bytes()[:100]),
         "weights.safetensors does not fit small3d_w0.125"),
        (lambda f: (f / WEIGHTS_FILE).unlink(), "weights.safetensors: no such file"),
    ],
)
def test_a_damaged_folder_is_one_line_naming_the_file(
    folder: Path, damage: Callable[[Path], object], message: str
) -> None:
    damage(folder)
    with pytest.raises(SavedModelError, match=f"^{folder}/.*") as err:
        load_saved_model(folder)
    assert message in str(err.value) and "\n" not in str(err.value)
