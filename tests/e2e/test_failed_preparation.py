"""A training run whose preparation fails (workflows.runtime.run_state.preparing): one line and exit 2, its MLflow
run FAILED rather than RUNNING, and no run folder left for `--resume latest` to pick. Ray is not started: the step
that fails after the MLflow run exists (the clip cache's `data.cache: on` error, raised while the streams are built)
is made to fail here; tests/slow/test_failed_preparation_ray.py lets real Ray reach it.

    .venv/bin/python -m pytest -q tests/e2e/test_failed_preparation.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ssl_core.config import ConfigError
from ssl_core.data.cache_errors import CacheTooLarge
from tests.failed_runs import error_line, runs_of, tiny_sets
from tests.tiny_runs import DEMO
from workflows.runtime import fit, streams, training
from workflows.runtime.run_state import find_run
from workflows.train import main


def test_an_error_after_the_mlflow_run_opened_marks_it_failed_and_leaves_no_run_folder(
    synth_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    too_large = "clip cache: needs 9.9 GB, data.cache_budget_gb is 0.001 (data.cache=on)"

    def build_datasets(*_: Any, **__: Any) -> dict[str, Any]:
        raise CacheTooLarge(too_large)

    monkeypatch.setattr(training, "init_ray", lambda **_: None)
    monkeypatch.setattr(fit, "driver_actors", lambda progress: (None, None))
    monkeypatch.setattr(streams, "build_datasets", build_datasets)
    assert main(["--config", str(DEMO), *tiny_sets(synth_dataset, tmp_path)]) == 2
    assert error_line(capsys) == f"error: {too_large}"
    (run,) = runs_of(tmp_path)
    assert run.info.status == "FAILED"
    assert run.data.params["data.num_labeled"] == "8"  # it got as far as its parameters
    assert list((tmp_path / "runs").iterdir()) == []
    with pytest.raises(ConfigError, match="no run to resume"):
        find_run(tmp_path / "runs", "latest")


def test_an_ssl_method_without_unlabeled_videos_stops_before_any_mlflow_run(
    synth_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sets = tiny_sets(synth_dataset, tmp_path, "algorithm.name=cmpl", "data.labeled_fraction=1.0")
    assert main(["--config", str(DEMO), *sets]) == 2
    assert error_line(capsys).startswith("error: data.labeled_fraction=1.0 labels all 12 train videos, leaving none "
                                         "unlabeled for algorithm cmpl")
    assert runs_of(tmp_path) == []
    assert list((tmp_path / "runs").iterdir()) == []
