"""`--resume` of a pretraining run: two Ray Train fits of 4 then 6 steps continue the same MLflow run (minutes on two
cores: make test-slow). The pretraining run itself: tests/e2e/test_e2e_pretrain.py.

    .venv/bin/python -m pytest -q tests/slow/test_pretrain_resume.py
"""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from ssl_core.pretrain.config import load_pretrain_config
from tests.tiny_runs import PRETRAIN, tiny_run
from workflows.pretrain import run_pretraining


def test_pretrain_resumes_in_the_same_run(ray_local: None, synth_dataset: Path, tmp_path: Path) -> None:
    overrides = [*tiny_run(synth_dataset, tmp_path), "train.iterations=4", "train.batch_size=2", "train.log_every=2",
                 "train.checkpoint_every=2", "pretrain.knn_every=2", "pretrain.hidden_dim=32", "pretrain.proj_dim=16",
                 "pretrain.probe_steps=10", "scaling.num_workers=2", "scaling.cpus_per_worker=0.5",
                 "tracking.experiment=e2e-pretrain-resume", "tracking.registered_model=e2e-backbone-resume"]
    setup = load_pretrain_config(PRETRAIN, overrides)
    first = run_pretraining(setup, progress=False)
    assert first.metrics["step"] == 4
    # --resume: the same MLflow run continues from the step-4 checkpoint (queue, momentum encoder, optimizer).
    resumed = run_pretraining(setup, resume="latest", overrides=["train.iterations=6"], progress=False)
    assert resumed.mlflow_run_id == first.mlflow_run_id and resumed.metrics["step"] == 6
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert [m.step for m in client.get_metric_history(first.mlflow_run_id, "loss/total")] == [2, 4, 6]
    assert [m.step for m in client.get_metric_history(first.mlflow_run_id, "knn/top1")] == [0, 2, 4, 6]
    assert client.get_run(first.mlflow_run_id).info.status == "FINISHED"
