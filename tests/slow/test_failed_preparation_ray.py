"""Through real Ray: `data.cache: on` with a cache that cannot fit is found while the streams are built, after the
MLflow run was opened and Ray started; the run ends with one line and exit 2, its MLflow run FAILED (not RUNNING)
and no run folder for `--resume latest` to pick. Without Ray: tests/e2e/test_failed_preparation.py.

    .venv/bin/python -m pytest -q tests/slow/test_failed_preparation_ray.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.failed_runs import error_line, runs_of, tiny_sets
from tests.tiny_runs import DEMO
from workflows.train import main


def test_a_clip_cache_that_cannot_fit_fails_the_mlflow_run_and_leaves_no_run_folder(
    ray_local: None, synth_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = tiny_sets(synth_dataset, tmp_path, "data.cache=on", "data.cache_budget_gb=0.000001",
                     f"data.cache_dir={tmp_path}/cache", "scaling.num_workers=1", "scaling.cpus_per_worker=0.5")
    assert main(["--config", str(DEMO), *sets]) == 2
    line = error_line(capsys)
    assert line.startswith("error: ") and "data.cache" in line
    (run,) = runs_of(tmp_path)
    assert run.info.status == "FAILED"
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(run.info.run_id).info.end_time is not None
    assert list((tmp_path / "runs").iterdir()) == []
