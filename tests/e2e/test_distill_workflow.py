"""The distillation workflow end to end through the real parts: a CMPL teacher trained with Ray Train and
registered in a SQLite MLflow store, then `workflows.distill.main` distilling it into a smaller student
(Ray Train again, Ray Data scoring of both, CPU timing), read back from MLflow.

    .venv/bin/python -m pytest -q tests/e2e/test_distill_workflow.py
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from ssl_core.checkpoint import save_training_state
from ssl_core.config import load_config
from ssl_core.models import build_model
from workflows import distill
from workflows.runtime.inference import load_for_inference
from workflows.runtime.run_state import RunState
from workflows.runtime.training import run_training

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
TEACHER = "dw-teacher"
# Few views and timed passes: the protocol is what is under test here, not the numbers.
FAST = ("--eval-clips", "2", "--bench-batch", "2", "--bench-repeats", "3")


@dataclass(frozen=True)
class Teacher:
    uri: str  # MLflow tracking URI
    run_id: str
    run_dir: Path
    model_uri: str  # models:/m-<id>, what the registry's version 1 holds
    tmp: Path


@pytest.fixture(scope="module")
def teacher(ray_local: None, synth_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Teacher:
    """A small3d CMPL primary (the demo's teacher) trained for 6 iterations, registered @champion."""
    tmp = tmp_path_factory.mktemp("distill")
    uri = f"sqlite:///{tmp}/mlflow.db"
    cfg = load_config(DEMO, [
        f"data.root={synth_dataset}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5",
        "data.num_frames=4", "data.size=40", "data.eval_clips=1", "augment.crop_size=32",
        "train.iterations=6", "train.batch_size=4", "train.mu=1", "train.log_every=3", "train.eval_every=6",
        "train.checkpoint_every=6", "train.warmup_iters=2", "algorithm.tau=0.0",
        f"tracking.uri={uri}", "tracking.experiment=distill-e2e", f"tracking.registered_model={TEACHER}",
        f"output.storage={tmp}/runs",
    ])
    outcome = run_training(cfg)
    MlflowClient(uri).set_registered_model_alias(TEACHER, "champion", outcome.model_version)
    return Teacher(uri, outcome.mlflow_run_id, outcome.run_dir, outcome.model_uri, tmp)


def test_distill_registers_a_smaller_student_with_lineage_and_tradeoff(
    teacher: Teacher, synth_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = distill.main(["--teacher", f"models:/{TEACHER}@champion", "--student", "small3d_w0.25",
                       "--tracking-uri", teacher.uri, "--mode", "soft", "--temperature", "2",
                       "--set", "train.iterations=3", "--set", "train.checkpoint_every=3",
                       "--set", "train.eval_every=3", *FAST])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| teacher: `models:/dw-teacher/1` | small3d |" in out
    assert "| student: `models:/dw-teacher-small3d_w0.25/1` | small3d_w0.25 |" in out

    client = MlflowClient(teacher.uri)
    [version] = client.search_model_versions(f"name='{TEACHER}-small3d_w0.25'")
    lineage = {"vidssl.workflow": "distill", "vidssl.teacher": f"models:/{TEACHER}@champion",
               "vidssl.teacher_model_uri": teacher.model_uri, "vidssl.teacher_version": "1",
               "vidssl.teacher_run": teacher.run_id}
    assert lineage.items() <= version.tags.items()

    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert lineage.items() <= run.data.tags.items()
    params = run.data.params
    # The training run's base is the teacher's own config; the teacher is pinned to the version @champion named.
    assert params["algorithm.name"] == "distill" and params["model.primary"] == "small3d_w0.25"
    assert params["model.teacher"] == f"models:/{TEACHER}/1"
    assert params["data.num_frames"] == "4" and params["train.iterations"] == "3"
    assert params["algorithm.params.mode"] == "soft" and params["algorithm.params.temperature"] == "2.0"
    assert {"eval/top1_primary", "eval/top1_teacher", "distill/agreement"} <= run.data.metrics.keys()

    m = run.data.metrics
    test_videos = sum(r["split"] == "test" for r in csv.DictReader((synth_dataset / "manifest.csv").open()))
    assert f"on the test split of {synth_dataset} ({test_videos} videos, 2 clips x 1 crop(s) per video)" in out
    for role in ("teacher", "student"):
        right = m[f"tradeoff/{role}_top1"] * test_videos
        assert right == pytest.approx(round(right), abs=1e-6)  # a whole number of the test videos
        assert m[f"tradeoff/{role}_top5"] == 1.0  # 4 classes: always in the top 5
        assert m[f"tradeoff/{role}_clips_per_s"] > 0
    teacher_params = sum(p.numel() for p in load_for_inference(teacher.model_uri, teacher.uri).model.parameters())
    assert m["tradeoff/teacher_params"] == teacher_params
    assert m["tradeoff/student_params"] == sum(p.numel() for p in build_model("small3d_w0.25", num_classes=4)
                                                 .parameters())
    assert m["tradeoff/student_params"] < m["tradeoff/teacher_params"]
    assert m["tradeoff/speedup"] == pytest.approx(m["tradeoff/student_clips_per_s"] / m["tradeoff/teacher_clips_per_s"])

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"tradeoff.md", "tradeoff.json", "config.yaml"} <= artifacts
    markdown = Path(client.download_artifacts(run.info.run_id, "tradeoff.md", str(teacher.tmp))).read_text()
    assert markdown.strip() in out
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "tradeoff.json", str(teacher.tmp))).read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert [(r["model"], r["params"]) for r in rows] == [("teacher", teacher_params),
                                                        ("student", m["tradeoff/student_params"])]


def test_base_config_comes_from_the_teachers_run_folder(teacher: Teacher) -> None:
    loaded = load_for_inference(str(teacher.run_dir), None)
    config = distill.teacher_training_config(loaded)
    assert config == RunState.load(teacher.run_dir).config
    assert distill.teacher_architecture(loaded, config) == "small3d"
    # a run folder's latest checkpoint is what gets pinned, so later checkpoints cannot change the teacher
    assert distill.pinned_spec(loaded) == loaded.source["checkpoint"]


@pytest.mark.parametrize(
    ("student", "message"),
    [
        ("small4d", "--student: unknown model 'small4d'; available: csn_r101, frame2d,"),
        ("swin3d_t_w0.5", "--student: model 'swin3d_t_w0.5': swin3d_t has no width variants"),
        ("small3d_w2", "--student small3d_w2: 1,165,796 parameters, not fewer than the teacher's 292,596; pick a "
                       "smaller model (e.g. a _w0.25 width) or pass --allow-larger"),
        ("small3d", "--allow-larger"),  # as large as the teacher is refused too
    ],
)
def test_refuses_unknown_or_larger_students_before_training(
    teacher: Teacher, capsys: pytest.CaptureFixture[str], student: str, message: str
) -> None:
    assert distill.main(["--teacher", f"models:/{TEACHER}/1", "--student", student,
                         "--tracking-uri", teacher.uri]) == 2
    assert message in capsys.readouterr().err
    assert not MlflowClient(teacher.uri).search_registered_models(f"name='{TEACHER}-{student}'")


def test_refuses_overriding_what_the_workflow_sets(teacher: Teacher, capsys: pytest.CaptureFixture[str]) -> None:
    assert distill.main(["--teacher", f"models:/{TEACHER}/1", "--student", "small3d_w0.5", "--tracking-uri",
                         teacher.uri, "--set", "model.primary=small3d_w0.25"]) == 2
    assert "model.primary: set by this workflow" in capsys.readouterr().err


def test_teacher_without_a_training_config_needs_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bare checkpoint directory (no run folder around it) says where the base config must come from."""
    model = build_model("small3d", num_classes=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    meta = {"classes": ["a", "b"], "num_frames": 4, "stride": 2, "size": 40, "crop_size": 32}
    save_training_state(tmp_path / "ckpt", models={"primary": model}, optimizer=optimizer,
                        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), step=1,
                        algorithm_state={}, model_names={"primary": "small3d"}, num_classes=2, meta=meta)
    assert distill.main(["--teacher", str(tmp_path / "ckpt"), "--student", "small3d_w0.25",
                         "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 2
    err = capsys.readouterr().err
    assert "its training config cannot be found" in err and "pass --config" in err
