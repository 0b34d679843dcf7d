"""A run folder's record (`vidssl_run.json`): the Ray Train name, MLflow run and resolved config that
`--resume` needs; shared by training (workflows.train) and pretraining (workflows.pretrain), with `preparing`, which
undoes what a driver made when its preparation fails (the MLflow run marked FAILED, a new run folder removed).

    python -m workflows.train --config configs/demo.yaml --resume latest     # find_run + RunState.load
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssl_core.atomic_file import write_text_atomic
from ssl_core.config import ConfigError
from ssl_core.run_folder import discard
from workflows.console import terminal

log = logging.getLogger("vidssl.run")

RUN_FILE = "vidssl_run.json"
LOG_FILE = terminal.LOG_FILE  # in the run folder: this process's logs and Ray's workers' output, see terminal.py


def write_record(path: Path, payload: dict[str, Any]) -> None:
    """A `--resume` record as indented JSON, through a temporary file: a crash never leaves half a record."""
    write_text_atomic(path, json.dumps(payload, indent=2))


@dataclass
class RunState:
    """What a run needs to be resumed: its Ray Train name, its MLflow run, its resolved config."""

    name: str
    run_dir: Path
    mlflow_run_id: str
    tracking_uri: str
    config: dict[str, Any]

    def save(self) -> None:
        payload = {"name": self.name, "mlflow_run_id": self.mlflow_run_id, "tracking_uri": self.tracking_uri,
                   "config": self.config}
        write_record(self.run_dir / RUN_FILE, payload)

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        """The record of `run_dir`; ConfigError naming the file when it is cut short, not JSON or lacks a key."""
        path = run_dir / RUN_FILE
        fix = ("restore it (e.g. from a backup), or start a new run without --resume; its checkpoints are in "
               f"{run_dir}")
        try:
            payload = json.loads(path.read_text())
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path} is not text ({err.reason}): {fix}") from err
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path} is not valid JSON (line {err.lineno} column {err.colno}: {err.msg}; "
                              f"cut short?): {fix}") from err
        keys = ("name", "mlflow_run_id", "tracking_uri", "config")
        missing = [k for k in keys if k not in payload] if isinstance(payload, dict) else list(keys)
        if missing:
            raise ConfigError(f"{path} lacks {', '.join(missing)}: {fix}")
        return cls(payload["name"], run_dir, payload["mlflow_run_id"], payload["tracking_uri"], payload["config"])



def find_run(storage: Path, which: str) -> Path:
    """`latest` -> the most recently started run under storage; otherwise a run name."""
    if which != "latest":
        run_dir = storage / which
        if not (run_dir / RUN_FILE).exists():
            raise ConfigError(f"--resume: no run named {which!r} under {storage}")
        return run_dir
    runs = sorted(storage.glob(f"*/{RUN_FILE}"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ConfigError(f"--resume latest: no run to resume under {storage}")
    return runs[-1].parent


@dataclass
class Preparation:
    """What a driver (training, pretraining) has made before its fit starts, for `preparing` to undo."""

    run_dir: Path | None = None  # the run folder claimed for a new run
    tracker: Any = None  # workflows.tracking.tracker.Tracker: the MLflow run once created or marked RUNNING


@contextmanager
def preparing() -> Iterator[Preparation]:
    """The part of a driver between claiming a run and fitting it (data, model.init, MLflow run, Ray, streams).
    When it raises, the MLflow run it opened or marked RUNNING is marked FAILED (KILLED for Ctrl-C) rather than
    left RUNNING, and a new run's folder, which holds no checkpoint yet, is removed (an interrupt leaves it), so
    that `--resume latest` does not pick a run that never trained. The error itself goes on to the entry point."""
    prep = Preparation()
    try:
        yield prep
    except BaseException as err:
        if prep.tracker is not None:
            try:
                prep.tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            except Exception as unmarked:  # e.g. the server went away: the error that stopped the run matters more
                log.warning("could not mark MLflow run %s failed: %s", prep.tracker.run_id, unmarked)
        if prep.run_dir is not None and isinstance(err, Exception):
            discard(prep.run_dir)
        raise
