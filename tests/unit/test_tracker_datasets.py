"""Runs that log the same dataset at once (a sweep's trials starting together) both get it as an input; other
errors of logging a dataset are raised, not retried.

    .venv/bin/python -m pytest -q tests/unit/test_tracker_datasets.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from sqlalchemy import event

from workflows.tracking.tracker import Tracker

SPLIT = pd.DataFrame({"path": ["a.mp4", "b.mp4"], "label": ["0", "1"]})


def store_engine(tracker: Tracker) -> Any:
    return tracker.client._tracking_client.store.engine  # the SQLAlchemy engine behind this client's SQLite store


def test_a_dataset_another_run_inserted_meanwhile_is_linked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = Tracker.start(uri, "sweep", "trial-0", {})
    second = Tracker.start(uri, "sweep", "trial-1", {})
    raced: list[str] = []

    def other_run_wins(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # The second run has looked the dataset up and not found it; the first inserts it before the second does.
        if statement.startswith("INSERT INTO datasets") and not raced:
            raced.append(statement)
            first.log_dataset(SPLIT, (tmp_path / "split.csv").as_uri(), "synth-labeled-split")

    event.listen(store_engine(second), "before_cursor_execute", other_run_wins)
    second.log_dataset(SPLIT, (tmp_path / "split.csv").as_uri(), "synth-labeled-split")
    assert raced  # the race did happen

    digests = [[d.dataset.digest for d in t.client.get_run(t.run_id).inputs.dataset_inputs] for t in (first, second)]
    assert digests[0] == digests[1] and len(digests[0]) == 1  # one dataset, an input of both runs


    # Any other error is raised at once, not retried.
    calls: list[Any] = []
    log_inputs = second.client.log_inputs
    monkeypatch.setattr(second.client, "log_inputs", lambda *a, **k: calls.append(a) or log_inputs(*a, **k))
    second.client.delete_run(second.run_id)
    with pytest.raises(MlflowException, match="active"):
        second.log_dataset(SPLIT, (tmp_path / "split.csv").as_uri(), "synth-labeled-split")
    assert len(calls) == 1


def test_an_experiment_another_run_created_meanwhile_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workflows starting at once on a new experiment: the one whose create loses finds the other's."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = Tracker.start(uri, "new", "run-0", {})
    real, lookups = MlflowClient.get_experiment_by_name, []

    def looked_up_before_it_existed(client: MlflowClient, name: str) -> Any:
        lookups.append(name)
        return None if len(lookups) == 1 else real(client, name)  # the second's lookup came before the first's create

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", looked_up_before_it_existed)
    second = Tracker.start(uri, "new", "run-1", {})
    ids = {first.client.get_run(t.run_id).info.experiment_id for t in (first, second)}
    assert len(ids) == 1
