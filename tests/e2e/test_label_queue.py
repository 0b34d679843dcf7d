"""The label queue command end to end through real Ray Data and a real MLflow SQLite store, with a registered
primary and a checkpoint's auxiliary model. Its score functions: tests/unit/test_label_queue_scores.py.

    .venv/bin/python -m pytest -q tests/e2e/test_label_queue.py
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from ssl_core.checkpoint import save_training_state
from ssl_core.models import build_model
from workflows import label_queue as lq
from workflows.tracking.tracker import Tracker

MODEL = "lq-model"
META = {"num_frames": 4, "stride": 2, "size": 40, "crop_size": 32}  # tiny clips: fast on two cores


@dataclass(frozen=True)
class Models:
    uri: str  # MLflow tracking URI
    primary: str  # models:/lq-model/1
    run_folder: Path  # a checkpoint holding "primary" and "auxiliary" models
    other_classes: Path  # a checkpoint whose class list differs
    classes: list[str]


def _checkpoint(directory: Path, models: dict[str, torch.nn.Module], classes: list[str]) -> None:
    optimizer = torch.optim.SGD(next(iter(models.values())).parameters(), lr=0.1)
    save_training_state(
        directory, models=models, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), step=3, algorithm_state={},
        model_names=dict.fromkeys(models, "small3d"), num_classes=len(classes), meta={"classes": classes, **META},
    )


@pytest.fixture(scope="module")
def models(synth_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Models:
    """Untrained small3d models: the queue only needs their (different) probabilities, not their accuracy."""
    tmp = tmp_path_factory.mktemp("lq-models")
    classes = (synth_dataset / "classes.txt").read_text().split()
    torch.manual_seed(0)
    primary, auxiliary = (build_model("small3d", num_classes=len(classes)).eval() for _ in range(2))
    _checkpoint(tmp / "run" / "checkpoint_000001", {"primary": primary, "auxiliary": auxiliary}, classes)
    _checkpoint(tmp / "other" / "checkpoint_000001", {"primary": primary}, classes[::-1])
    uri = f"sqlite:///{tmp}/mlflow.db"
    tracker = Tracker.start(uri, "train", "train-run", {})
    _, version = tracker.log_model(primary, MODEL, torch.zeros(1, 3, 4, 32, 32).numpy(), {"classes": classes, **META},
                                   architecture="small3d")
    tracker.finish()
    return Models(uri, f"models:/{MODEL}/{version}", tmp / "run", tmp / "other", classes)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_queue_end_to_end_with_two_models(
    ray_local: None, synth_dataset: Path, models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    videos = tmp_path / "videos"
    shutil.copytree(synth_dataset, videos, ignore=shutil.ignore_patterns("*.csv", "*.txt"))
    all_videos = sorted(str(p) for p in videos.rglob("*.mp4"))
    (videos / "broken.mp4").write_bytes(b"")
    labeled = tmp_path / "labeled.csv"  # split-file style: relative to the dataset root (--videos)
    labeled.write_text("path,label\n" + "".join(f"{Path(p).relative_to(videos)},x\n" for p in all_videos[:2]))
    out = tmp_path / "queue.csv"
    base = ["--model", models.primary, "--aux-model", f"{models.run_folder}#auxiliary", "--videos", str(videos),
            "--exclude", str(labeled), "--out", str(out), "--tracking-uri", models.uri, "--clips", "2",
            "--experiment", "lq"]
    assert lq.main([*base, "--budget", "5"]) == 0
    printed = capsys.readouterr().out
    queue = _read(out)
    assert list(queue[0]) == [*lq.COLUMNS, *lq.AUX_COLUMNS]
    assert [r["rank"] for r in queue] == ["1", "2", "3", "4", "5"]
    broken = str(videos / "broken.mp4")
    candidates = set(all_videos[2:])
    assert {r["path"] for r in queue} <= candidates  # absolute; never an excluded or unreadable video
    assert all(r["suggested_label"] in models.classes and r["aux_label"] in models.classes for r in queue)
    # Ranked on full-precision scores; the CSV keeps 6 decimals, so only disagreement order is checked there
    # (the margin tie-break decides between scores that may print equal).
    keys = [(r["models_disagree"] == "false", -float(r["disagreement"])) for r in queue]
    assert keys == sorted(keys)
    assert f"{len(candidates) + 1} candidates (2 already labeled left out), 1 unreadable skipped, 5 queued" in printed
    assert f"skipped (unreadable): {broken}" in printed

    before = out.read_bytes()
    assert lq.main([*base, "--budget", "5"]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before

    # Every candidate queued: the 5 above are the head of the full ranking.
    assert lq.main([*base, "--budget", "100", "--overwrite"]) == 0
    full = _read(out)
    assert {r["path"] for r in full} == candidates
    # Scores are recomputed in other batches, so equal up to float noise; near-equal scores may swap places.
    by_path = {r["path"]: r for r in full}
    for row in queue:
        assert float(by_path[row["path"]]["disagreement"]) == pytest.approx(float(row["disagreement"]), abs=1e-4)
    head = [(r["models_disagree"], float(r["disagreement"])) for r in full[:5]]
    assert head == [(r["models_disagree"], pytest.approx(float(r["disagreement"]), abs=1e-4)) for r in queue]
    assert not list(tmp_path.glob(".*.tmp"))

    client = MlflowClient(models.uri)
    runs = client.search_runs([client.get_experiment_by_name("lq").experiment_id], order_by=["start_time ASC"])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    first = runs[0]
    assert first.data.params["strategy"] == "disagreement" and first.data.params["budget"] == "5"
    m = first.data.metrics
    assert (m["candidates"], m["excluded"], m["skipped"], m["queued"]) == (len(candidates) + 1, 2, 1, 5)
    assert m["mean_margin_queued"] == pytest.approx(np.mean([float(r["margin"]) for r in queue]), abs=1e-5)
    tags = first.data.tags
    assert (tags["vidssl.model"], tags["vidssl.model_name"], tags["vidssl.model_version"]) == (models.primary,
                                                                                              MODEL, "1")
    assert tags["vidssl.aux_model_uri"] == f"{models.run_folder / 'checkpoint_000001'}#auxiliary"
    artifacts = {a.path for a in client.list_artifacts(first.info.run_id)}
    assert artifacts == {"label_queue.csv", "skipped_videos.tsv"}
    logged = mlflow.artifacts.download_artifacts(run_id=first.info.run_id, artifact_path="label_queue.csv",
                                                 tracking_uri=models.uri)
    assert Path(logged).read_bytes() == before
    skipped = mlflow.artifacts.download_artifacts(run_id=first.info.run_id, artifact_path="skipped_videos.tsv",
                                                  tracking_uri=models.uri)
    assert Path(skipped).read_text().startswith(broken + "\t")


def test_clear_errors_before_any_scoring(
    synth_dataset: Path, models: Models, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--model", str(models.run_folder), "--videos", str(synth_dataset), "--out", str(tmp_path / "q.csv"),
            "--tracking-uri", models.uri]
    assert lq.main([*base, "--budget", "3", "--aux-model", str(models.other_classes)]) == 2
    err = capsys.readouterr().err
    assert f"--aux-model {models.other_classes}" in err and f"--model {models.run_folder}" in err
    assert "class" in err
    assert lq.main([*base, "--budget", "3", "--strategy", "disagreement"]) == 2
    assert "--aux-model" in capsys.readouterr().err
    assert lq.main([*base, "--budget", "0"]) == 2
    assert "--budget must be >= 1" in capsys.readouterr().err
    assert lq.main([*base, "--budget", "3", "--aux-model", f"{models.other_classes}#auxiliary"]) == 2
    assert "no 'auxiliary' model" in capsys.readouterr().err
    assert not (tmp_path / "q.csv").exists()
