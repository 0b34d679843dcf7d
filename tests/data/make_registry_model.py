"""Makes tests/data/registry_model/: a tiny small3d logged once by Tracker.log_model (the pickle-free MLflow
format of workflows/tracking/safe_model.py) in a throw-away MLflow store, its artifact folder copied to
registry_model/model/, and the logits it gives on a fixed clip in registry_model/expected_logits.json.
tests/unit/test_safe_model.py loads the folder through load_for_inference and compares, so a change that stops
vidssl from loading the models it logged before fails there. Re-make it only when the format changes on purpose:

    .venv/bin/python -m tests.data.make_registry_model
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import mlflow
import torch

from ssl_core.models import build_model
from workflows.tracking.tracker import Tracker

OUT = Path(__file__).parent / "registry_model"
ARCHITECTURE = "small3d_w0.0625"  # 1-2-4-8 channels: a 7 KB weights file
META = {"classes": ["jump", "run", "wave"], "num_frames": 2, "stride": 2, "size": 10, "crop_size": 8}
PROBE = "torch.arange(768.0).sin().reshape(2, 3, 2, 8, 8)"  # the clips expected_logits.json holds the logits of


def main() -> None:
    torch.manual_seed(0)
    model = build_model(ARCHITECTURE, num_classes=len(META["classes"])).eval()
    # Non-trivial BatchNorm statistics, so that a loader dropping buffers gives other logits; a larger classifier,
    # so that the logits of the two probe clips differ visibly (at init they are mostly its bias).
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        model.fc.weight.mul_(50)
    with tempfile.TemporaryDirectory() as tmp:
        tracker = Tracker.start(f"sqlite:///{tmp}/mlflow.db", "registry-model", "make", {})
        model_uri, _ = tracker.log_model(model, None, torch.zeros(1, 3, 2, 8, 8).numpy(), META,
                                         architecture=ARCHITECTURE)
        tracker.finish()
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=f"{tmp}/download")
        shutil.rmtree(OUT / "model", ignore_errors=True)
        shutil.copytree(local, OUT / "model")
    with torch.no_grad():
        logits = model(torch.arange(768.0).sin().reshape(2, 3, 2, 8, 8))  # PROBE
    (OUT / "expected_logits.json").write_text(json.dumps({"probe": PROBE, "logits": logits.tolist()}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
