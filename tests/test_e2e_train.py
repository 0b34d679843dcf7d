"""End to end through the real parts: encoded mp4 files -> Ray Data -> Ray Train (2 workers, DDP)
-> a real MLflow SQLite store, read back afterwards. Then `--resume` continues the same run.

    .venv/bin/python -m pytest -q tests/test_e2e_train.py
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ssl_core.config import Config, load_config
from ssl_core.data import synthetic
from workflows.train import RUN_FILE, run_training

pytestmark = pytest.mark.e2e
DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic set plus one zero-byte 'video' listed in the manifest as a train row."""
    root = tmp_path_factory.mktemp("synth")
    manifest = synthetic.generate(root, classes=4, videos_per_class=8, seed=3, frames=16, size=48)
    (root / "broken.mp4").write_bytes(b"")
    with manifest.open("a", newline="") as f:
        label = next(csv.DictReader(manifest.open()))["label"]
        csv.writer(f).writerow(["broken.mp4", label, "train"])
    return root


def tiny_config(dataset: Path, tmp: Path, *extra: str) -> Config:
    return load_config(DEMO, [
        f"data.root={dataset}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5",
        "data.num_frames=4", "data.size=40", "data.eval_clips=2", "augment.crop_size=32",
        "train.iterations=6", "train.batch_size=4", "train.mu=1", "train.log_every=2",
        "train.eval_every=6", "train.checkpoint_every=3", "train.warmup_iters=2", "algorithm.tau=0.0",
        "scaling.num_workers=2", "scaling.cpus_per_worker=0.5",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db", "tracking.experiment=e2e", "tracking.registered_model=e2e-primary",
        f"output.storage={tmp}/runs", *extra,
    ])


def test_cmpl_two_workers_then_resume(ray_local: None, dataset: Path, tmp_path: Path) -> None:
    cfg = tiny_config(dataset, tmp_path)
    outcome = run_training(cfg)

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["algorithm.name"] == "cmpl"
    assert run.data.params["scaling.num_workers"] == "2"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/total")]
    assert steps == [2, 3, 4, 6]  # every log_every, checkpoint_every and the last step
    for role in ("primary", "auxiliary"):
        top1 = client.get_metric_history(run.info.run_id, f"eval/top1_{role}")
        assert [m.step for m in top1] == [6] and 0.0 <= top1[0].value <= 1.0
        assert client.get_metric_history(run.info.run_id, f"pseudo/mask_rate_{role}")
        # tau = 0 keeps every pseudo-label, so the quality metric is defined
        assert client.get_metric_history(run.info.run_id, f"pseudo/accuracy_{role}")
    assert client.get_metric_history(run.info.run_id, "pseudo/agreement")
    assert run.data.metrics["data/skipped_videos"] == 1.0

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "data")}
    assert {"config.yaml", "labeled_split.csv", "eval/confusion_primary.png", "eval/confusion_auxiliary.png",
            "eval/per_class_accuracy.csv", "data/skipped_videos.tsv"} <= artifacts
    versions = client.search_model_versions("name='e2e-primary'")
    assert [v.run_id for v in versions] == [run.info.run_id]

    split = (outcome.run_dir / "labeled_split.csv").read_text().splitlines()
    # 50% of each class's train videos: 6 -> 3, and 7 -> 4 for the class that also lists broken.mp4
    assert split[0] == "path,label" and len(split) == 1 + 3 * 3 + 4
    assert (outcome.run_dir / RUN_FILE).exists()

    resumed = run_training(cfg, resume="latest", overrides=["train.iterations=8"])
    assert resumed.mlflow_run_id == outcome.mlflow_run_id
    assert resumed.metrics["step"] == 8
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/total")]
    assert steps == [2, 3, 4, 6, 8]  # continued from the step-6 checkpoint: nothing repeated
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.parametrize(
    ("name", "models"),
    [
        ("fixmatch", {"primary"}),
        ("pseudo_label", {"primary"}),
        ("mean_teacher", {"primary", "teacher"}),  # the EMA teacher is evaluated too
        ("mixmatch", {"primary"}),
        ("meta_pseudo_labels", {"primary", "teacher"}),
    ],
)
def test_every_ssl_algorithm_runs_the_same_pipeline(
    ray_local: None, dataset: Path, tmp_path: Path, name: str, models: set[str]
) -> None:
    cfg = tiny_config(dataset, tmp_path, f"algorithm.name={name}", "scaling.num_workers=1",
                      "train.iterations=2", "train.checkpoint_every=2", "train.eval_every=2")
    outcome = run_training(cfg)
    assert outcome.metrics["step"] == 2
    evaluated = {k.removeprefix("eval/top1_") for k in outcome.metrics if k.startswith("eval/top1_")}
    assert evaluated == models


def test_supervised_then_noisy_student_from_its_run_folder(ray_local: None, dataset: Path, tmp_path: Path) -> None:
    """A frozen teacher from a run folder (its latest checkpoint); tests/test_distill_workflow.py takes one from
    the Model Registry."""
    common = ("scaling.num_workers=1", "train.iterations=2", "train.checkpoint_every=2", "train.eval_every=2")
    teacher = run_training(tiny_config(dataset, tmp_path, "algorithm.name=supervised", *common,
                                       "tracking.registered_model=e2e-teacher"))
    assert "eval/top1_auxiliary" not in teacher.metrics
    student = run_training(tiny_config(dataset, tmp_path, "algorithm.name=noisy_student", *common,
                                       f"model.teacher={teacher.run_dir}", "model.primary=small3d_w0.5"))
    assert student.metrics["step"] == 2
    assert {"eval/top1_primary", "eval/top1_teacher"} <= set(student.metrics)
