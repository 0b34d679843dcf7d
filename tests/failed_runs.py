"""What the tests of runs whose preparation fails share (tests/e2e/test_failed_preparation.py,
tests/slow/test_failed_preparation_ray.py): a tiny run's --set arguments, its MLflow runs, the one error line.

    .venv/bin/python -m pytest -q tests/e2e/test_failed_preparation.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient


def tiny_sets(dataset: Path, tmp: Path, *extra: str) -> list[str]:
    overrides = [
        f"data.root={dataset}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5", "data.num_frames=4",
        "data.size=40", "data.eval_clips=1", "augment.crop_size=32", "model.primary=small3d_w0.25",
        "model.auxiliary=small3d_w0.25", "train.iterations=2", "train.batch_size=4",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db", "tracking.experiment=prep", f"output.storage={tmp}/runs", *extra,
    ]
    return [arg for o in overrides for arg in ("--set", o)]


def runs_of(tmp: Path) -> list[Any]:
    client = MlflowClient(f"sqlite:///{tmp}/mlflow.db")
    experiment = client.get_experiment_by_name("prep")
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    return line
