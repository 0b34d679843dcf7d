"""The label queue: score functions on hand-made probabilities, candidate selection, and the command end to
end through real Ray Data and a real MLflow SQLite store, with a registered primary and a checkpoint's
auxiliary model.

    .venv/bin/python -m pytest -q tests/unit/test_label_queue.py
"""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient

from ssl_core.checkpoint import save_training_state
from ssl_core.models import build_model
from workflows import label_queue as lq
from workflows.tracking.tracker import Tracker

MODEL = "lq-model"
META = {"num_frames": 4, "stride": 2, "size": 40, "crop_size": 32}  # tiny clips: fast on two cores


# --- scores -----------------------------------------------------------------------------------------------


def test_margin_and_normalized_entropy_by_hand() -> None:
    probs = np.array([[0.5, 0.25, 0.25, 0.0], [0.25] * 4, [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(lq.margin(probs), [0.25, 0.0, 1.0, 0.0])
    # In bits: H = 0.5*1 + 0.25*2 + 0.25*2 = 1.5 of log2(4) = 2 -> 0.75; uniform 1; one-hot 0; two halves 1/2.
    np.testing.assert_allclose(lq.normalized_entropy(probs), [0.75, 1.0, 0.0, 0.5], atol=1e-12)


def test_js_divergence_and_disagreement_by_hand() -> None:
    p = np.array([[1.0, 0.0], [0.3, 0.7], [1.0, 0.0], [0.6, 0.4]])
    q = np.array([[0.0, 1.0], [0.3, 0.7], [0.5, 0.5], [0.4, 0.6]])
    # Row 3: m = (0.75, 0.25); KL(p||m) = log2(4/3) = 0.415037; KL(q||m) = 0.5*log2(2/3) + 0.5*log2(2) = 0.207519;
    # JS = their mean = 0.311278. Disjoint supports: 1 bit; equal rows: 0.
    np.testing.assert_allclose(lq.js_divergence(p, q)[:3], [1.0, 0.0, 0.311278], atol=1e-6)
    np.testing.assert_allclose(lq.js_divergence(p, q), lq.js_divergence(q, p))  # symmetric
    assert lq.models_disagree(p, q).tolist() == [True, False, False, True]


def test_rank_margin_and_entropy_with_path_tie_break() -> None:
    paths = ["/v/d.mp4", "/v/b.mp4", "/v/a.mp4", "/v/c.mp4"]
    probs = np.array([
        [0.5, 0.25, 0.25],  # d: margin 0.25, entropy 0.946 (the highest)
        [0.9, 0.05, 0.05],  # b: margin 0.85, entropy 0.357
        [0.45, 0.45, 0.10],  # a: margin 0,    entropy 0.864
        [0.45, 0.45, 0.10],  # c: the same as a: the path decides
    ])
    scores = lq.Scores.of(paths, probs)
    assert [paths[i] for i in lq.rank(scores, "margin")] == ["/v/a.mp4", "/v/c.mp4", "/v/d.mp4", "/v/b.mp4"]
    assert [paths[i] for i in lq.rank(scores, "entropy")] == ["/v/d.mp4", "/v/a.mp4", "/v/c.mp4", "/v/b.mp4"]
    with pytest.raises(ValueError, match="auxiliary"):
        lq.rank(scores, "disagreement")


def test_rank_disagreement_first_then_js_then_margin() -> None:
    rows = {  # path: (primary, auxiliary)
        "/v/x.mp4": ([0.45, 0.40, 0.15], [0.40, 0.45, 0.15]),  # disagree, JS ~0.002
        "/v/y.mp4": ([0.90, 0.05, 0.05], [0.40, 0.30, 0.30]),  # agree, JS ~0.15
        "/v/z.mp4": ([0.80, 0.10, 0.10], [0.10, 0.80, 0.10]),  # disagree, JS ~0.46
        "/v/v.mp4": ([0.70, 0.20, 0.10], [0.70, 0.20, 0.10]),  # agree, JS 0, margin 0.5
        "/v/w.mp4": ([0.50, 0.30, 0.20], [0.50, 0.30, 0.20]),  # agree, JS 0, margin 0.2
        "/v/u.mp4": ([0.50, 0.30, 0.20], [0.50, 0.30, 0.20]),  # the same as w: the path decides
    }
    paths = list(rows)
    scores = lq.Scores.of(paths, np.array([r[0] for r in rows.values()]), np.array([r[1] for r in rows.values()]))
    assert scores.disagreement is not None
    assert scores.disagreement[2] > scores.disagreement[1] > scores.disagreement[0] > 0
    order = [paths[i] for i in lq.rank(scores, "disagreement")]
    assert order == ["/v/z.mp4", "/v/x.mp4", "/v/y.mp4", "/v/u.mp4", "/v/w.mp4", "/v/v.mp4"]
    rows_out = lq.queue_rows(scores, lq.rank(scores, "disagreement"), ["run", "jump", "sit"], budget=2)
    assert rows_out == [
        {"rank": "1", "path": "/v/z.mp4", "suggested_label": "run", "confidence": "0.800000", "margin": "0.700000",
         "entropy": f"{scores.entropy[2]:.6f}", "aux_label": "jump", "aux_confidence": "0.800000",
         "disagreement": f"{scores.disagreement[2]:.6f}", "models_disagree": "true"},
        {"rank": "2", "path": "/v/x.mp4", "suggested_label": "run", "confidence": "0.450000", "margin": "0.050000",
         "entropy": f"{scores.entropy[0]:.6f}", "aux_label": "jump", "aux_confidence": "0.450000",
         "disagreement": f"{scores.disagreement[0]:.6f}", "models_disagree": "true"},
    ]


def test_resolve_strategy() -> None:
    assert lq.resolve_strategy("auto", with_aux=True) == "disagreement"
    assert lq.resolve_strategy("auto", with_aux=False) == "margin"
    assert lq.resolve_strategy("entropy", with_aux=True) == "entropy"
    with pytest.raises(lq.InputError, match="--aux-model"):
        lq.resolve_strategy("disagreement", with_aux=False)


# --- candidates -------------------------------------------------------------------------------------------


def test_candidates_from_a_config_and_exclude_rules(synth_dataset: Path, tmp_path: Path) -> None:
    rows = list(csv.DictReader((synth_dataset / "manifest.csv").open()))
    train = sorted(str(synth_dataset / r["path"]) for r in rows if r["split"] == "train")
    split = tmp_path / "labeled_split.csv"  # a training run's split file: paths relative to data.root
    split.write_text(f"path,label\n{Path(train[0]).relative_to(synth_dataset)},{Path(train[0]).parent.name}\n")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(synth_dataset), "layout": "csv",
                                               "labeled_split_file": str(split)}}))
    got = lq.collect_candidates(str(config), [])
    assert (got.paths, got.root, got.excluded) == (train[1:], synth_dataset.resolve(), 1)
    # An --exclude listing relative to its own folder, another relative to the dataset root, one absolute.
    own = tmp_path / "own.csv"
    own.write_text(f"path\n{os.path.relpath(train[1], tmp_path)}\n")
    by_root = tmp_path / "elsewhere" / "by_root.csv"
    by_root.parent.mkdir()
    by_root.write_text(f"path,label\n{Path(train[2]).relative_to(synth_dataset)},x\n{train[3]}\n")
    got = lq.collect_candidates(str(config), [str(own), str(by_root)])
    assert got.paths == train[4:] and got.excluded == 4
    with pytest.raises(lq.InputError, match="no 'path' column"):
        (tmp_path / "bad.csv").write_text("video\nx.mp4\n")
        lq.collect_candidates(str(config), [str(tmp_path / "bad.csv")])


# --- the command ------------------------------------------------------------------------------------------


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
    _, version = tracker.log_model(primary, MODEL, torch.zeros(1, 3, 4, 32, 32).numpy(), {"classes": classes, **META})
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
