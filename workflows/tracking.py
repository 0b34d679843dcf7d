"""The one place that talks to MLflow: runs, metrics, artifacts, models, the registry.

Review what it records with the command `vidssl train` prints at the end, e.g.

    .venv/bin/mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
# MLflow rejects param values over 6000 characters and batches over 100 params.
_MAX_PARAM_LEN = 6000
_PARAM_BATCH = 100


def resolve_uri(configured: str | None) -> str:
    """Config value, else $MLFLOW_TRACKING_URI, else a SQLite file in the working directory (absolute,
    because Ray workers do not share the driver's working directory)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(DEFAULT_DB).resolve()}"


def ui_command(uri: str) -> str:
    if uri.startswith("sqlite:"):
        return f".venv/bin/mlflow ui --backend-store-uri {uri}"
    return f"open {uri} in a browser"


def model_requirements() -> list[str]:
    """What loading a logged model needs: torch and cloudpickle (MLflow's defaults) and pytorchvideo, whose
    classes the r3d models pickle. The pickled models also reference ssl_core: install vidssl to load them."""
    from importlib.metadata import version

    import mlflow.pytorch

    return [*mlflow.pytorch.get_default_pip_requirements(), f"pytorchvideo=={version('pytorchvideo')}"]


class Tracker:
    """A handle on one MLflow run, usable from the driver and from the rank-0 Train worker."""

    def __init__(self, uri: str, run_id: str):
        self.uri = uri
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=uri)

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
            exp_id = client.create_experiment(experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
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
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

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
        self, model: Any, registered_name: str | None, input_example: Any, meta: Mapping[str, Any]
    ) -> tuple[str, str | None]:
        """Log the deployable model (with a signature inferred from `input_example` and `meta`, see
        ssl_core.checkpoint.model_meta, as MLflow model metadata); register it when a name is given.
        Returns the model URI (also tagged on the run as `vidssl.model_uri`) and the registered version."""
        mlflow.set_tracking_uri(self.uri)
        with mlflow.start_run(run_id=self.run_id):
            info = mlflow.pytorch.log_model(
                model, name="model", registered_model_name=registered_name, input_example=input_example,
                # pickle keeps any batch size at load time; pt2 would fix the traced example's shape.
                serialization_format="pickle", metadata={"vidssl": dict(meta)},
                # Given, not inferred: inference re-imports the model in a subprocess (~9 s per run here).
                pip_requirements=model_requirements(),
            )
        self.client.set_tag(self.run_id, "vidssl.model_uri", info.model_uri)
        version = getattr(info, "registered_model_version", None)
        return info.model_uri, (str(version) if version is not None else None)

    def log_dataset(self, table: Any, source: str, name: str, digest: str, context: str) -> None:
        """Record a dataset this run made or consumed (MLflow's Datasets panel, `digest` as its version).
        `table`: a pandas DataFrame whose schema and row count are recorded, not its rows."""
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():
            # A local path matches two equivalent MLflow source types; it warns and picks one, which is fine.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            dataset = mlflow.data.from_pandas(table, source=source, name=name, digest=digest)
        tags = [InputTag(key="mlflow.data.context", value=context)]
        # The client call, not mlflow.log_input: that needs the active run, whose exit would end the run.
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=tags)])

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)

    def metric_history(self, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in self.client.get_metric_history(self.run_id, key)]
