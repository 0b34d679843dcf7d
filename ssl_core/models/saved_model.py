"""A trained model as two files that load without running stored code: `weights.safetensors` (tensors only) and
`spec.json` (the registry architecture that rebuilds the module, its build arguments, the clip it reads, the vidssl
version). workflows/tracking/safe_model.py logs such a folder as an MLflow model; this module has no MLflow in it.

spec.json:
    {"format": "vidssl-safetensors", "format_version": 1, "vidssl_version": "0.1.0",
     "architecture": "r3d_18_w0.5", "num_classes": 8, "width": 0.5, "dropout": 0.0,
     "mean": [0.45, 0.45, 0.45], "std": [0.225, 0.225, 0.225],
     "meta": {"classes": [...], "num_frames": 8, "stride": 4, "size": 128, "crop_size": 112}}

`meta` is ssl_core.checkpoint.model_meta (what checkpoints and the MLflow metadata `vidssl` hold); `mean` / `std`
are the per-channel normalisation the model expects after scaling uint8 frames to [0, 1].

Try it (the committed test model):
    python -c "from ssl_core.models.saved_model import load_saved_model; \
print(load_saved_model('tests/data/registry_model/model/data/model')[1])"
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from ssl_core.data.transforms import MEAN, STD
from ssl_core.models.registry import build_model, parse_model_name

FORMAT = "vidssl-safetensors"
FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"
SPEC_FILE = "spec.json"
# What the loader needs from spec.json; `meta` must hold the clip shape and class names (model_meta).
REQUIRED = ("format", "format_version", "architecture", "num_classes", "meta")
META_REQUIRED = ("classes", "num_frames", "stride", "size", "crop_size")


class SavedModelError(ValueError):
    """A saved-model folder that cannot be loaded; the message names the file."""


def vidssl_version() -> str:
    try:
        return version("vidssl")
    except PackageNotFoundError:  # a source checkout that was never pip-installed
        return "unknown"


def model_spec(architecture: str, num_classes: int, meta: Mapping[str, Any]) -> dict[str, Any]:
    """spec.json's content for a model built as build_model(architecture, num_classes=num_classes)."""
    _, width = parse_model_name(architecture)
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "vidssl_version": vidssl_version(),
            "architecture": architecture, "num_classes": int(num_classes), "width": width,
            # Deployed models are built without dropout (ssl_core.checkpoint.model_from_state).
            "dropout": 0.0, "mean": list(MEAN), "std": list(STD), "meta": dict(meta)}


def save_model_files(directory: str | Path, model: nn.Module, spec: Mapping[str, Any]) -> None:
    """Write `model`'s weights and `spec` (model_spec) into `directory` (created; must not hold them yet)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, SPEC_FILE):
        if (directory / name).exists():
            raise FileExistsError(f"{directory / name} exists; save into an empty folder")
    # safetensors' save_model, not save_file: it drops the duplicates of shared tensors, which save_file refuses.
    save_model(model, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    (directory / SPEC_FILE).write_text(json.dumps(dict(spec), indent=1) + "\n")


def read_spec(directory: str | Path) -> dict[str, Any]:
    """spec.json of a saved-model folder, checked for what load_saved_model needs."""
    path = Path(directory) / SPEC_FILE
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise SavedModelError(f"{path}: no such file (not a {FORMAT} model folder)") from err
    except ValueError as err:
        raise SavedModelError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(spec, dict):
        raise SavedModelError(f"{path}: expected a JSON object, found {type(spec).__name__}")
    missing = [k for k in REQUIRED if k not in spec]
    missing += [f"meta.{k}" for k in META_REQUIRED if k not in (spec.get("meta") or {})]
    if missing:
        raise SavedModelError(f"{path}: missing {', '.join(missing)}")
    if spec["format"] != FORMAT or spec["format_version"] != FORMAT_VERSION:
        raise SavedModelError(f"{path}: format {spec['format']!r} version {spec['format_version']!r}; this vidssl "
                              f"reads {FORMAT!r} version {FORMAT_VERSION}")
    classes = spec["meta"]["classes"]
    if not isinstance(classes, list) or not isinstance(spec["num_classes"], int) or len(classes) != spec["num_classes"]:
        raise SavedModelError(f"{path}: num_classes {spec['num_classes']!r} does not match meta.classes "
                              f"({len(classes) if isinstance(classes, list) else classes!r})")
    return spec


def load_saved_model(directory: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a saved-model folder (eval mode, on the CPU) rebuilt from the registry, and its spec."""
    directory = Path(directory)
    spec = read_spec(directory)
    try:
        model = build_model(str(spec["architecture"]), num_classes=spec["num_classes"],
                            dropout=float(spec.get("dropout", 0.0)))
    except (KeyError, ValueError, TypeError) as err:
        reason = err.args[0] if err.args else err
        raise SavedModelError(f"{directory / SPEC_FILE}: architecture: {reason}") from err
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise SavedModelError(f"{weights}: no such file")
    try:
        load_model(model, str(weights), strict=True, device="cpu")
    except (SafetensorError, RuntimeError, OSError) as err:
        detail = " ".join(str(err).split())[:300]
        raise SavedModelError(f"{weights} does not fit {spec['architecture']} with {spec['num_classes']} classes: "
                              f"{detail}") from err
    return model.eval(), spec
