"""vidssl's MLflow model format: weights as safetensors plus a JSON spec, loaded without unpickling anything.

The logged model (artifact folder `model/`) is an MLflow pyfunc model logged with
`mlflow.pyfunc.log_model(loader_module="workflows.tracking.safe_model", data_path=...)`:

    model/MLmodel                          flavor python_function: loader_module + data (YAML, no code);
                                           metadata `vidssl` (model_meta) and `vidssl_model` (the spec)
    model/data/model/weights.safetensors   tensors only
    model/data/model/spec.json             registry architecture, build arguments, classes, clip, mean / std
    model/input_example.json, serving_input_example.json, requirements.txt, python_env.yaml, conda.yaml

Why this mechanism: mlflow.pytorch's "pickle" format stores the module as a pickle, and loading a pickle runs
whatever code its author put in it; its "pt2" format (torch.export) fixes the batch shape of the traced example.
`mlflow.pyfunc.log_model(python_model=...)` would cloudpickle the wrapper object (python_model.pkl). With
`loader_module` MLflow writes no pickle at all: loading imports this module by name and calls `_load_pyfunc` on
the data folder, which rebuilds the module from vidssl's model registry (ssl_core.models.saved_model) and
reads the weights with safetensors. vidssl itself (load_safe_model) skips pyfunc and reads the folder directly.

A model logged by an older vidssl in the mlflow.pytorch format is refused by
workflows.runtime.inference.load_for_inference unless the caller trusts it (--trust-pickle, model.trust_pickle).

Look at one (spec.json and the weights, no code):
    MLFLOW_TRACKING_URI=sqlite:///$PWD/mlflow.db .venv/bin/mlflow artifacts download \
        -u models:/vidssl-demo-primary/latest -d /tmp/model && cat /tmp/model/data/model/spec.json
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from torch import nn

from ssl_core.models.saved_model import (
    FORMAT,
    SavedModelError,
    load_saved_model,
    model_spec,
    save_model_files,
)

LOADER_MODULE = __name__
PYFUNC = "python_function"
# Where data_path lands in the artifact: MLflow copies the folder under data/ by its own name.
DATA_DIR = "model"
# MLflow model metadata keys: what the inference loader reads (unchanged from the pickled format) and the spec.
META_KEY = "vidssl"
SPEC_KEY = "vidssl_model"


def model_requirements() -> list[str]:
    """What loading the model needs besides MLflow: torch and safetensors, torchvision and pytorchvideo for the
    registry's r3d models; and vidssl itself (the loader module and the registry), installed from its source."""
    return [f"{name}=={version(name)}" for name in ("torch", "torchvision", "pytorchvideo", "safetensors", "numpy")]


def log_safe_model(
    model: nn.Module, architecture: str, meta: Mapping[str, Any], input_example: np.ndarray,
    registered_name: str | None,
) -> tuple[ModelInfo, dict[str, Any]]:
    """Log `model` (built as build_model(architecture, num_classes=len(meta["classes"]))) into the active run as
    artifact `model`, registered as `registered_name` when given. Returns MLflow's ModelInfo and the spec."""
    spec = model_spec(architecture, len(meta["classes"]), meta)
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(input_example)).numpy()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / DATA_DIR
        save_model_files(data, model, spec)
        info = mlflow.pyfunc.log_model(
            name="model", loader_module=LOADER_MODULE, data_path=str(data), registered_model_name=registered_name,
            # Given, not inferred: pyfunc infers nothing for a loader_module model; the batch dimension stays -1.
            signature=infer_signature(input_example, logits), input_example=input_example,
            # A copy of the spec: objects it shares with `meta` would appear as YAML anchors in the MLmodel file.
            metadata={META_KEY: dict(meta), SPEC_KEY: json.loads(json.dumps(spec))},
            pip_requirements=model_requirements(),
        )
    return info, spec


def is_safe_model(flavors: Mapping[str, Any]) -> bool:
    """Whether an MLmodel's flavors are this format's (read from the YAML file: nothing is loaded)."""
    return (flavors.get(PYFUNC) or {}).get("loader_module") == LOADER_MODULE


def load_safe_model(model_uri: str, flavors: Mapping[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The module and spec of a model in this format (is_safe_model(flavors)): its artifacts are downloaded to a
    temporary folder and read with json and safetensors."""
    data = str(flavors[PYFUNC].get("data") or "")
    if not data or Path(data).is_absolute() or ".." in Path(data).parts:
        raise SavedModelError(f"{model_uri}: its MLmodel names no data folder inside the model ({data!r})")
    with tempfile.TemporaryDirectory() as tmp:
        # The whole model folder: models:/ URIs take no sub-path.
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        return load_saved_model(Path(local) / data)


class SafePyfuncModel:
    """What mlflow.pyfunc.load_model returns for this format (e.g. for `mlflow models serve`): logits of
    float32 clips (B, 3, T, h, w) normalised like ssl_core.data.transforms does."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.as_tensor(np.asarray(model_input, dtype=np.float32))).numpy()


def _load_pyfunc(data_path: str) -> SafePyfuncModel:
    """The pyfunc entry point (MLflow's loader_module protocol): `data_path` is the model's data folder."""
    model, _ = load_saved_model(data_path)
    return SafePyfuncModel(model)


def version_description(spec: Mapping[str, Any]) -> str:
    """A registered version's description: the spec in one paragraph (all of it: model/data/model/spec.json)."""
    meta = spec["meta"]
    classes = ", ".join(map(str, meta["classes"]))
    return (f"{spec['architecture']} ({spec['num_classes']} classes: {classes}); clip {meta['num_frames']} frames, "
            f"stride {meta['stride']}, decoded at {meta['size']} px, centre crop {meta['crop_size']}; "
            f"mean {spec['mean']}, std {spec['std']}; {FORMAT} v{spec['format_version']} "
            f"(safetensors + spec.json), vidssl {spec['vidssl_version']}")


def version_tags(spec: Mapping[str, Any]) -> dict[str, str]:
    """Registered-version tags: the spec's fields the registry UI lists and filters by."""
    meta = spec["meta"]
    return {"vidssl.format": f"{FORMAT}/{spec['format_version']}", "vidssl.architecture": str(spec["architecture"]),
            "vidssl.num_classes": str(spec["num_classes"]), "vidssl.classes": json.dumps(meta["classes"]),
            "vidssl.clip": f"{meta['num_frames']}x{meta['crop_size']}x{meta['crop_size']} stride {meta['stride']}",
            "vidssl.version": str(spec["vidssl_version"])}
