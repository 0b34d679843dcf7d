"""The one place that talks to MLflow: runs, metrics, artifacts, models, the registry.

Review what it records with the command `vidssl train` prints at the end, e.g.

    .venv/bin/mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db

Metrics a run could not deliver while the server was away (left in its newest checkpoint) are sent with

    python -m workflows.tracking.tracker --upload-unsent runs/<run name>
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import mlflow.data
from mlflow import MlflowClient
from mlflow.entities import DatasetInput, InputTag, Metric, Param
from mlflow.exceptions import MlflowException

from ssl_core.atomic_file import write_text_atomic
from ssl_core.config import Config, ConfigError
from workflows.console import terminal
from workflows.tracking.safe_model import log_safe_model, version_description, version_tags

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
# Metrics a buffering Tracker could not deliver, as JSON lines in a checkpoint directory (see upload_unsent).
UNSENT_FILE = "unsent_metrics.jsonl"
# MLflow's limit on metrics per log_batch request; sending chunk by chunk keeps a partial failure exact.
_METRIC_BATCH = 1000
# MLflow rejects param values over 6000 characters and batches over 100 params.
_MAX_PARAM_LEN = 6000
_PARAM_BATCH = 100
# The experiment tag MLflow 3's UI reads to open an experiment on its runs table (model training) rather than
# its GenAI traces view; the values are the UI's ExperimentKind enum (mlflow/server/js, "custom_model_development").
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# How the stores word an insert that lost to a row another client committed first: SQLite "UNIQUE constraint
# failed", PostgreSQL "violates unique constraint", MySQL "Duplicate entry" (also through a tracking server).
_LOST_INSERT_RACE = re.compile(r"unique constraint|duplicate entry", re.IGNORECASE)
log = logging.getLogger("vidssl.tracking")


def resolve_uri(configured: str | None) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else a SQLite file in the working directory (absolute,
    because Ray workers do not share the driver's working directory)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(DEFAULT_DB).resolve()}"


class TrackingUnreachable(ConfigError):
    """The configured MLflow tracking server does not answer; raised before any training starts."""


@contextlib.contextmanager
def quick_requests(retries: int, timeout_s: int) -> Iterator[None]:
    """MLflow HTTP calls that give up in seconds, not minutes (its defaults retry with backoff); values the
    user exported win."""
    wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    added = [k for k in wanted if k not in os.environ]
    os.environ.update({k: wanted[k] for k in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def check_reachable(uri: str) -> None:
    """Fail with one line naming `uri` when an http(s) tracking server does not answer. File stores and
    SQLite are created on demand, so only remote servers are checked."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with quick_requests(retries=1, timeout_s=15):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as err:  # connection refused, timeout, proxy or HTTP error: all mean "not usable"
        # MLflow's message nests the whole urllib3 retry story; the OS reason is the useful part.
        reason = re.search(r"\[Errno -?\d+\][^'\")]*", str(err))
        detail = reason.group(0) if reason else " ".join(str(err).split())[:300]
        raise TrackingUnreachable(f"MLflow tracking server {uri} is unreachable: {detail}") from err


def read_unsent(directory: str | Path) -> list[dict[str, Any]]:
    """The metrics a Tracker left in `directory` (write_unsent), oldest first; [] when there are none."""
    path = Path(directory) / UNSENT_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def upload_unsent(directory: str | Path) -> int:
    """Deliver the metrics left in a checkpoint directory, or in a run folder's newest checkpoint, to their
    run; returns how many. Only the newest counts: its writer still held whatever older checkpoints list and
    had not delivered. The file is removed once delivered, so a second upload sends nothing twice."""
    directory = Path(directory)
    if not (directory / UNSENT_FILE).is_file():
        checkpoints = sorted(directory.glob("checkpoint_*"))  # Ray Train names them with a sortable timestamp
        directory = checkpoints[-1] if checkpoints else directory
    records = read_unsent(directory)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["uri"], r["run_id"]), []).append(r)
    for (uri, run_id), group in groups.items():
        tracker = Tracker(uri, run_id, buffer_metrics=True)
        tracker.requeue(group)
        if not tracker.flush():
            raise TrackingUnreachable(f"MLflow tracking server {uri} is unreachable; {directory / UNSENT_FILE} kept"
                                      f" for `python -m workflows.tracking.tracker --upload-unsent {directory}`")
    if records:
        (directory / UNSENT_FILE).unlink()
    return len(records)


class _LinesToLog:
    """A text stream whose lines become INFO records of a logger."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.pending = ""

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if line.strip():
                self.logger.info(line)
        return len(text)

    def flush(self) -> None:
        pass


@contextlib.contextmanager
def registry_notes_to_log() -> Iterator[None]:
    """MLflow prints its registry notes ("Successfully registered model ...", "Created version ...") to stderr
    itself, not through logging; without --verbose they go to the logger `mlflow` (the run's log file)."""
    if terminal.verbose():
        yield
        return
    with contextlib.redirect_stderr(_LinesToLog(logging.getLogger("mlflow"))):
        yield


def run_tags(cfg: Config, run_dir: Path) -> dict[str, str]:
    """The tags every training run's MLflow run carries (the UI's columns to filter runs by)."""
    d = cfg.data
    return {"vidssl.algorithm": cfg.algorithm.name, "vidssl.primary": cfg.model.primary,
            "vidssl.labeled": str(d.labeled_fraction or f"{d.labeled_per_class}/class"),
            "vidssl.run_dir": str(run_dir)}


def table_digest(table: Any) -> str:
    """16 hex digits of the SHA-256 of a DataFrame's CSV text: the same rows in the same order, the same digest
    (MLflow's own digest of a DataFrame reads only its first 10,000 rows)."""
    return hashlib.sha256(table.to_csv(index=False, lineterminator="\n").encode()).hexdigest()[:16]


def ui_command(uri: str) -> str:
    if uri.startswith("sqlite:"):
        return f".venv/bin/mlflow ui --backend-store-uri {uri}"
    return f"open {uri} in a browser"


class Tracker:
    """A handle on one MLflow run, usable from the driver and from the rank-0 Train worker."""

    def __init__(self, uri: str, run_id: str, *, buffer_metrics: bool = False):
        """`buffer_metrics`: log_metrics never raises; what the server does not take is kept, oldest first,
        and sent before the next metrics (training must not stop because the tracking server is away)."""
        self.uri = uri
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=uri)
        self.buffer_metrics = buffer_metrics
        self.unsent: list[Metric] = []

    @classmethod
    def start(cls, uri: str, experiment: str, run_name: str | None, tags: Mapping[str, str]) -> Tracker:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            # With a local SQLite store, keep artifacts beside the database rather than in Ray's cwd.
            location = None
            if uri.startswith("sqlite:"):
                db_path = Path(uri.removeprefix("sqlite:///"))
                location = (db_path.parent / DEFAULT_ARTIFACTS).resolve().as_uri()
            try:
                exp_id = client.create_experiment(experiment, artifact_location=location,
                                                  tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
            except MlflowException as err:
                # Another run made it since the lookup (two workflows started at once on a new experiment).
                if err.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                exp_id = client.get_experiment_by_name(experiment).experiment_id
        else:
            exp_id = exp.experiment_id
            if EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older vidssl or by hand; a kind set in the UI stays
                client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        run = client.create_run(exp_id, run_name=run_name, tags=dict(tags))
        return cls(uri, run.info.run_id)

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in sorted(params.items())]
        for i in range(0, len(items), _PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _PARAM_BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int, model_id: str | None = None) -> None:
        """`model_id` also links the metrics to that MLflow LoggedModel (e.g. an evaluation of it)."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step, model_id=model_id) for k, v in metrics.items()
                 if not math.isnan(float(v))]
        if not self.buffer_metrics:
            if batch:
                self.client.log_batch(self.run_id, metrics=batch)
            return
        self.unsent += batch
        self.flush()

    def flush(self) -> bool:
        """Send the buffered metrics, oldest first; True when nothing is left. A chunk leaves the buffer only
        once the server took it, so nothing is sent twice or dropped (barring a reply lost after a write)."""
        try:
            # No retry loop here: the next call retries. A generous timeout: a slow but alive server must not
            # time out after it stored a batch, or the resend would log that batch twice.
            with quick_requests(retries=0, timeout_s=30):
                while self.unsent:
                    self.client.log_batch(self.run_id, metrics=self.unsent[:_METRIC_BATCH])
                    del self.unsent[:_METRIC_BATCH]
        except Exception as err:  # any transport or server error: keep the metrics for the next try
            log.warning("MLflow %s unreachable, %d metrics buffered: %s", self.uri, len(self.unsent),
                        " ".join(str(err).split())[:200])
            return False
        return True

    def write_unsent(self, directory: str | Path) -> int:
        """Write the still-buffered metrics to `directory`/UNSENT_FILE (e.g. a checkpoint), for a restarted
        worker or `python -m workflows.tracking.tracker --upload-unsent` to deliver later; returns how many."""
        if not self.unsent:
            return 0
        lines = [json.dumps({"uri": self.uri, "run_id": self.run_id, "key": m.key, "value": m.value,
                             "timestamp": m.timestamp, "step": m.step, "model_id": m.model_id})
                 for m in self.unsent]
        write_text_atomic(Path(directory) / UNSENT_FILE, "".join(line + "\n" for line in lines))
        return len(lines)

    def requeue(self, records: list[dict[str, Any]]) -> None:
        """Put metrics read back by read_unsent at the front of the buffer: they are older than any new one."""
        self.unsent[:0] = [Metric(r["key"], r["value"], r["timestamp"], r["step"], model_id=r["model_id"])
                           for r in records]

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_model(
        self, model: Any, registered_name: str | None, input_example: Any, meta: Mapping[str, Any], *,
        architecture: str,
    ) -> tuple[str, str | None]:
        """Log the deployable model, built as build_model(`architecture`), in the pickle-free format of
        workflows.tracking.safe_model (safetensors + spec.json; `meta`, see ssl_core.checkpoint.model_meta, as
        MLflow model metadata, a signature from `input_example`); register it when a name is given, the spec as
        the version's description and tags. Returns the model URI (also tagged on the run as `vidssl.model_uri`)
        and the registered version."""
        mlflow.set_tracking_uri(self.uri)
        with registry_notes_to_log(), mlflow.start_run(run_id=self.run_id):
            info, spec = log_safe_model(model, architecture, meta, input_example, registered_name)
        self.client.set_tag(self.run_id, "vidssl.model_uri", info.model_uri)
        version = getattr(info, "registered_model_version", None)
        if version is None or not registered_name:
            return info.model_uri, None
        self.client.update_model_version(registered_name, str(version), description=version_description(spec))
        for key, value in version_tags(spec).items():
            self.client.set_model_version_tag(registered_name, str(version), key, value)
        return info.model_uri, str(version)

    def log_dataset(self, table: Any, source: str, name: str, digest: str | None = None,
                    context: str = "training") -> None:
        """Record a dataset this run made or consumed (MLflow's Datasets panel, `digest` as its version; by
        default table_digest(table)). `table`: a pandas DataFrame whose schema and row count are recorded, not
        its rows."""
        digest = digest or table_digest(table)
        with warnings.catch_warnings():
            # A local path matches two equivalent MLflow source types; it warns and picks one, which is fine.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            dataset = mlflow.data.from_pandas(table, source=source, name=name, digest=digest)
        tags = [InputTag(key="mlflow.data.context", value=context)]
        entry = DatasetInput(dataset._to_mlflow_entity(), tags=tags)
        # The client call, not mlflow.log_input: that needs the active run, whose exit would end the run.
        try:
            self.client.log_inputs(self.run_id, datasets=[entry])
        except MlflowException as err:
            # Runs that log the same dataset at once (a sweep's trials share the manifest, and trials with the same
            # labeled fraction the same split): MLflow looks the dataset up by (experiment, name, digest), then
            # inserts it, and the later insert collides with the row the other run committed in between. That row
            # is there now, so logging again links this run to it.
            if not _LOST_INSERT_RACE.search(str(err)):
                raise
            self.client.log_inputs(self.run_id, datasets=[entry])

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def status(self) -> str:
        """The run's MLflow status: RUNNING, FINISHED, FAILED, KILLED or SCHEDULED."""
        return str(self.client.get_run(self.run_id).info.status)

    def last_logged_step(self, key: str = "step") -> int:
        """The highest step at which `key` was logged (0 if never): MLflow keeps a metric's latest value by
        step, and the `step` metric's value is its step."""
        value = self.client.get_run(self.run_id).data.metrics.get(key)
        return 0 if value is None else int(value)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Deliver metrics a run buffered while MLflow was unreachable.")
    parser.add_argument("--upload-unsent", metavar="DIR", required=True,
                        help=f"a checkpoint directory or a run folder holding {UNSENT_FILE} files")
    args = parser.parse_args(argv)
    try:
        sent = upload_unsent(args.upload_unsent)
    except TrackingUnreachable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"uploaded {sent} metrics from {args.upload_unsent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
