"""The four runners over ssl_core.engine's one step loop report the same metrics: a few steps of training and of
pretraining through the Ray Train worker (Ray Data, MLflow) and through the Ray-free runner, on the tiny
synthetic set; the metric keys of the Ray run (all it logged to MLflow) must equal the Ray-free run's reports'.

    .venv/bin/python -m pytest -q tests/e2e/test_engine_adapters.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from ssl_core.config import load_config
from ssl_core.engine import Report
from ssl_core.loop import run_local
from ssl_core.pretrain.config import load_pretrain_config
from ssl_core.pretrain.local import run_local_pretrain
from tests.tiny_runs import DEMO, PRETRAIN, tiny_run
from workflows.pretrain import run_pretraining
from workflows.runtime.training import run_training

pytestmark = pytest.mark.e2e


def common(dataset: Path, tmp: Path) -> list[str]:
    return [*tiny_run(dataset, tmp), "train.iterations=4", "train.batch_size=2", "train.log_every=2",
            "train.checkpoint_every=4", "scaling.num_workers=1", "scaling.cpus_per_worker=0.5",
            "tracking.registered_model=null"]


def logged_keys(tmp: Path, run_id: str) -> set[str]:
    return set(MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db").get_run(run_id).data.metrics)


class Reports:
    def __init__(self) -> None:
        self.keys: set[str] = set()
        self.steps: list[int] = []
        self.last: dict[str, float] = {}

    def __call__(self, report: Report) -> None:
        self.keys |= set(report.metrics)
        self.steps.append(report.step)
        self.last = report.metrics


def test_ray_and_ray_free_training_report_the_same_metrics(
    ray_local: None, synth_dataset: Path, tmp_path: Path
) -> None:
    sets = [*common(synth_dataset, tmp_path), "algorithm.name=cmpl", "algorithm.tau=0.0", "algorithm.unsup_warmup=1",
            "algorithm.unsup_rampup=0", "train.ema_start=1", "train.mu=1", "train.eval_every=4",
            "tracking.experiment=e2e-engine"]
    outcome = run_training(load_config(DEMO, sets), progress=False)
    ray_keys = logged_keys(tmp_path, outcome.mlflow_run_id)

    reports = Reports()
    result = run_local(load_config(DEMO, sets), decode_threads=2, on_report=reports)
    assert reports.steps == [2, 4]
    assert reports.keys == ray_keys
    for key in ("loss/total", "pseudo/mask_rate_primary", "pseudo/accuracy_primary", "grad_norm", "lr",
                "perf/clips_per_s", "data/skipped_videos", "eval/top1_primary", "eval/top1_auxiliary", "step"):
        assert key in ray_keys, key
    assert any(k.startswith("eval_class/") for k in ray_keys)
    assert "perf/it_per_s" not in ray_keys  # a pretraining number
    # The runner's result is its last report's evaluation, and the Ray run ended at the last step.
    assert result["top1_primary"] == reports.last["eval/top1_primary"]
    assert outcome.metrics["step"] == 4


def test_ray_and_ray_free_pretraining_report_the_same_metrics(
    ray_local: None, synth_dataset: Path, tmp_path: Path
) -> None:
    sets = [*common(synth_dataset, tmp_path), "pretrain.knn_every=2", "pretrain.pretext=arrow",
            "pretrain.hidden_dim=32", "pretrain.proj_dim=16", "pretrain.probe_steps=5",
            "tracking.experiment=e2e-engine-pretrain"]
    outcome = run_pretraining(load_pretrain_config(PRETRAIN, sets), progress=False)
    ray_keys = logged_keys(tmp_path, outcome.mlflow_run_id)

    reports = Reports()
    result = run_local_pretrain(load_pretrain_config(PRETRAIN, sets), decode_threads=2, run_dir=tmp_path / "local",
                                on_report=reports)
    assert reports.steps == [2, 4]
    assert reports.keys == ray_keys
    for key in ("loss/total", "loss/pretext", "pretrain/instance_acc", "grad_norm", "lr", "perf/clips_per_s",
                "perf/it_per_s", "data/skipped_videos", "knn/top1", "probe/top1", "step"):
        assert key in ray_keys, key
    assert [s for s, _ in result["knn_history"]] == [0, 2, 4]
    assert sorted(p.name for p in (tmp_path / "local").glob("checkpoint_*")) == ["checkpoint_000004"]
