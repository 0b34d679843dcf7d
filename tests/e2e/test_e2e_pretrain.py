"""Pretrain -> fine-tune end to end through the real parts: mp4 files -> Ray Data (rho clips per video, no labels)
-> Ray Train (2 workers, DDP, all-gathered queue) -> a real MLflow store and Model Registry; then a FixMatch run
(workflows.train) started from the pretraining run folder, with its lineage. Semi-supervised pretraining
(pretrain.labeled_weight) through the same parts, continuing a pretraining. `--resume` (two more Ray Train fits):
tests/slow/test_pretrain_resume.py.

    .venv/bin/python -m pytest -q tests/e2e/test_e2e_pretrain.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ssl_core.config import load_config
from tests.tiny_runs import DEMO, PRETRAIN, tiny_run
from workflows.pretrain import main
from workflows.runtime.run_state import RunState
from workflows.runtime.training import run_training


def test_pretrain_then_fixmatch_from_the_backbone(
    ray_local: None, synth_dataset: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    overrides = [*tiny_run(synth_dataset, tmp_path), "train.iterations=4", "train.batch_size=2", "train.log_every=2",
                 "train.checkpoint_every=2", "pretrain.knn_every=2", "pretrain.pretext=arrow",
                 "pretrain.hidden_dim=32", "pretrain.proj_dim=16", "pretrain.probe_steps=10",
                 "scaling.num_workers=2", "scaling.cpus_per_worker=0.5", "tracking.experiment=e2e-pretrain",
                 "tracking.registered_model=e2e-backbone"]
    # The command a person runs (python -m workflows.pretrain): its closing lines.
    assert main(["--config", str(PRETRAIN), *(a for o in overrides for a in ("--set", o))]) == 0
    out = capfd.readouterr().out
    assert "rho_moco pretraining of small3d_w0.25" in out and "k-NN top-1" in out and "linear probe top-1" in out
    assert "step 2/4  evaluation: knn top-1" in out
    run_dir = next((tmp_path / "runs").glob("pretrain-rho_moco-*"))
    assert f"--set model.init={run_dir}" in out
    state = RunState.load(run_dir)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(state.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["vidssl.stage"] == "pretrain" and run.data.tags["vidssl.objective"] == "rho_moco"
    assert run.data.params["pretrain.rho"] == "3" and run.data.params["scaling.num_workers"] == "2"
    assert not any(k.startswith("algorithm.") for k in run.data.params)
    # Every train video streams, labeled or not; the labeled split is only the k-NN memory bank.
    assert int(run.data.params["data.num_train"]) > int(run.data.params["data.num_labeled"])
    # step 0: the features before pretraining, the point the curve must rise from
    knn = client.get_metric_history(run.info.run_id, "knn/top1")
    probe = client.get_metric_history(run.info.run_id, "probe/top1")
    assert [m.step for m in knn] == [0, 2, 4] and [m.step for m in probe] == [4]
    # both score each test video once: a whole number of them right
    test_videos = sum(r["split"] == "test" for r in csv.DictReader((synth_dataset / "manifest.csv").open()))
    for m in (*knn, *probe):
        assert m.value * test_videos == pytest.approx(round(m.value * test_videos), abs=1e-6), m
    assert client.get_metric_history(run.info.run_id, "loss/pretext")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "pretrain/instance_acc")] == [2, 4]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "knn")}
    assert {"config.yaml", "labeled_split.csv", "knn/top1_curve.png"} <= artifacts
    (version,) = client.search_model_versions("name='e2e-backbone'")
    assert version.run_id == run.info.run_id
    assert {"vidssl.stage": "pretrain", "vidssl.objective": "rho_moco",
            "vidssl.run_id": run.info.run_id}.items() <= version.tags.items()

    # Fine-tune: FixMatch from the pretraining run folder; its classifier starts fresh, every backbone key loads.
    cfg = load_config(DEMO, [*tiny_run(synth_dataset, tmp_path), "algorithm.name=fixmatch", f"model.init={run_dir}",
                             "train.iterations=2", "train.batch_size=4", "train.mu=1", "train.log_every=2",
                             "train.eval_every=2", "train.checkpoint_every=2", "scaling.num_workers=1",
                             "scaling.cpus_per_worker=0.5", "tracking.experiment=e2e-finetune",
                             "tracking.registered_model=e2e-finetuned"])
    outcome = run_training(cfg)
    out = capfd.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("init primary from"))
    assert "24/26 keys matched" in line and "head re-initialised" in line and "self-supervised backbone" in line
    train_run = client.get_run(outcome.mlflow_run_id)
    assert train_run.data.params["init.primary.matched"] == "24"
    assert train_run.data.params["init.primary.reinitialised"] == "2"
    assert train_run.data.params["init.primary.unexpected"] == "0"
    lineage = {"vidssl.init_source": str(run_dir), "vidssl.init_run": run.info.run_id}
    assert lineage.items() <= train_run.data.tags.items()
    (finetuned,) = client.search_model_versions("name='e2e-finetuned'")
    assert lineage.items() <= finetuned.tags.items()

    # The registered backbone as an MLflow URI: resolved on the driver, its untrained head still left out.
    from workflows.tracking.model_init import prepare_init

    uri_cfg = load_config(DEMO, [*tiny_run(synth_dataset, tmp_path), "algorithm.name=fixmatch",
                                 "model.init=models:/e2e-backbone/1"])
    prepared = prepare_init(uri_cfg, tmp_path / "uri-run", f"sqlite:///{tmp_path}/mlflow.db",
                            _classes(outcome.run_dir), fresh=True)
    (report,) = prepared.reports
    assert len(report.matched) == 24 and report.reinitialised == ["fc.weight", "fc.bias"]
    assert prepared.lineage["vidssl.init_run"] == run.info.run_id


def test_semi_supervised_pretraining_streams_the_labeled_split_to_every_worker(
    ray_local: None, synth_dataset: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """pretrain.labeled_weight through Ray: a "labeled" stream split over 2 DDP workers beside the train stream,
    the classifier's loss in MLflow, the run continuing a Ray-free pretraining, and the fine-tuning command naming
    the run's labeled split."""
    from ssl_core.pretrain.config import load_pretrain_config
    from ssl_core.pretrain.local import run_local_pretrain

    tiny = [*tiny_run(synth_dataset, tmp_path), "train.iterations=2", "train.batch_size=2", "train.log_every=2",
            "train.checkpoint_every=2", "pretrain.knn_every=0", "pretrain.hidden_dim=32", "pretrain.proj_dim=16",
            "pretrain.probe_steps=0"]
    run_local_pretrain(load_pretrain_config(PRETRAIN, tiny), decode_threads=1, run_dir=tmp_path / "first")
    overrides = [*tiny, f"model.init={tmp_path / 'first'}", "pretrain.labeled_weight=1", "pretrain.labeled_batch=2",
                 "scaling.num_workers=2", "scaling.cpus_per_worker=0.5", "tracking.experiment=e2e-semi"]
    assert main(["--config", str(PRETRAIN), *(a for o in overrides for a in ("--set", o))]) == 0
    out = capfd.readouterr().out
    run_dir = next((tmp_path / "runs").glob("pretrain-rho_moco-*"))
    assert f"--set data.labeled_split_file={run_dir / 'labeled_split.csv'}" in out
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run_id = RunState.load(run_dir).mlflow_run_id
    assert [m.step for m in client.get_metric_history(run_id, "loss/labeled")] == [2]
    assert 0 <= client.get_metric_history(run_id, "labeled/accuracy")[0].value <= 1
    assert client.get_run(run_id).data.params["pretrain.labeled_weight"] == "1.0"


def _classes(run_dir: Path) -> list[str]:
    from ssl_core.checkpoint import latest_checkpoint_dir, load_training_state

    return list(load_training_state(latest_checkpoint_dir(run_dir))["meta"]["classes"])
