"""Model loading, evaluation and batch prediction through the real parts: mp4 files -> Ray Data (decode
tasks + an actor pool) -> a real MLflow SQLite store and Model Registry, and Parquet files read back.

    .venv/bin/python -m pytest -q tests/e2e/test_inference.py
"""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from ssl_core.checkpoint import save_training_state
from ssl_core.data import synthetic
from ssl_core.data.manifest import ManifestError
from ssl_core.models import build_model
from workflows import evaluate, predict
from workflows.runtime.inference import InferenceError, load_for_inference
from workflows.runtime.train_worker import load_teacher
from workflows.tracking.tracker import Tracker

MODEL = "inf-model"
# Tiny clips keep the module fast on two cores.
CLIPS = ("--clips", "2", "--crops", "3")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synthetic.generate(root, classes=3, videos_per_class=4, seed=0, frames=16, size=48)
    return root


@dataclass(frozen=True)
class Trained:
    uri: str  # MLflow tracking URI
    run_id: str  # the training run
    run_folder: Path  # holds checkpoint_000001/
    checkpoint: Path
    bare_checkpoint: Path  # saved without meta
    classes: list[str]


def _save(directory: Path, model: torch.nn.Module, meta: dict | None) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_training_state(
        directory, models={"primary": model}, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), step=7, algorithm_state={},
        model_names={"primary": "small3d"}, num_classes=3, meta=meta,
    )


@pytest.fixture(scope="module")
def trained(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One small3d model as a checkpoint (in a run folder) and as a registered MLflow model @champion."""
    tmp = tmp_path_factory.mktemp("trained")
    classes = (dataset / "classes.txt").read_text().split()
    meta = {"classes": classes, "num_frames": 4, "stride": 2, "size": 40, "crop_size": 32}
    torch.manual_seed(0)
    model = build_model("small3d", num_classes=3).eval()
    checkpoint = tmp / "run" / "checkpoint_000001"
    _save(checkpoint, model, meta)
    _save(tmp / "bare", model, None)
    uri = f"sqlite:///{tmp}/mlflow.db"
    tracker = Tracker.start(uri, "train", "train-run", {})
    _, version = tracker.log_model(model, MODEL, torch.zeros(1, 3, 4, 32, 32).numpy(), meta, architecture="small3d")
    tracker.finish()
    client = MlflowClient(uri)
    client.set_registered_model_alias(MODEL, "champion", version)
    # A model logged without vidssl metadata, registered as another name.
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=client.get_experiment_by_name("train").experiment_id):
        mlflow.pytorch.log_model(model, name="model", registered_model_name="no-meta", pip_requirements=[],
                                 serialization_format="pickle")
    return Trained(uri, tracker.run_id, tmp / "run", checkpoint, tmp / "bare", classes)


def test_load_for_inference_resolves_every_kind_of_spec(trained: Trained) -> None:
    by_alias = load_for_inference(f"models:/{MODEL}@champion", trained.uri)
    src = by_alias.source
    assert (src["kind"], src["name"], src["version"], src["run_id"]) == ("mlflow", MODEL, "1", trained.run_id)
    assert src["uri"] == f"models:/{src['model_id']}" and src["model_id"].startswith("m-")
    assert by_alias.classes == trained.classes and by_alias.meta["crop_size"] == 32
    assert not by_alias.model.training
    for number in ("1", "latest"):
        by_number = load_for_inference(f"models:/{MODEL}/{number}", trained.uri)
        assert (by_number.source["version"], by_number.source["model_id"]) == ("1", src["model_id"])
    by_run = load_for_inference(f"runs:/{trained.run_id}/model", trained.uri)
    assert by_run.source["model_id"] == src["model_id"] and by_run.source["name"] is None
    from_folder = load_for_inference(str(trained.run_folder), None)
    assert from_folder.source == {
        "spec": str(trained.run_folder), "kind": "checkpoint", "uri": str(trained.checkpoint), "tracking_uri": None,
        "name": None, "version": None, "model_id": None, "run_id": None, "checkpoint": str(trained.checkpoint),
        "step": 7,
    }
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        assert torch.allclose(by_alias.model(x), from_folder.model(x))
    # The teacher loader is the same loader, checking the class order.
    assert isinstance(load_teacher(str(trained.checkpoint), trained.uri, trained.classes), torch.nn.Module)
    with pytest.raises(ValueError, match="differ"):
        load_teacher(str(trained.checkpoint), trained.uri, trained.classes[::-1])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("models:/no-meta/1", "no vidssl model metadata"),
        ("BARE", "no vidssl model metadata"),
        (f"models:/{MODEL}@nope", "alias nope not found"),
        ("models:/missing@champion", "missing not found"),
        ("/no/such/checkpoint", "nor a checkpoint directory"),
    ],
)
def test_unusable_specs_are_named_in_the_error(trained: Trained, spec: str, message: str) -> None:
    spec = str(trained.bare_checkpoint) if spec == "BARE" else spec
    with pytest.raises(InferenceError, match=message) as err:
        load_for_inference(spec, trained.uri)
    assert str(err.value).startswith(spec)


def test_eval_set_sources(dataset: Path, trained: Trained, tmp_path: Path) -> None:
    classes = trained.classes
    with_split = evaluate.load_eval_set(str(dataset / "manifest.csv"), "test", classes)
    rows = list(csv.DictReader((dataset / "manifest.csv").open()))
    assert len(with_split.items) == sum(r["split"] == "test" for r in rows) > 0
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(dataset), "layout": "csv"}}))
    assert evaluate.load_eval_set(str(config), "test", classes).items == with_split.items
    assert len(evaluate.load_eval_set(str(dataset), "test", classes).items) == 12  # a folder without splits: all
    no_split = tmp_path / "all.csv"
    no_split.write_text("path,label\n" + "".join(f"{dataset / r['path']},{r['label']}\n" for r in rows))
    items = evaluate.load_eval_set(str(no_split), "test", classes).items
    assert len(items) == 12
    assert all(classes[it["label"]] == Path(it["path"]).parent.name for it in items)  # mapped to the model's order
    with pytest.raises(ManifestError, match="no such"):
        evaluate.load_eval_set(str(tmp_path / "missing"), "test", classes)


def _with_broken(dataset: Path, folder: Path) -> Path:
    """A copy of the dataset's manifest (absolute paths) plus a zero-byte test 'video'."""
    (folder / "broken.mp4").write_bytes(b"")
    rows = list(csv.DictReader((dataset / "manifest.csv").open()))
    manifest = folder / "eval.csv"
    lines = [f"{dataset / r['path']},{r['label']},{r['split']}" for r in rows]
    manifest.write_text("\n".join(["path,label,split", *lines, f"broken.mp4,{rows[0]['label']},test"]) + "\n")
    return manifest


def _check_against_per_class(run: Run, uri: str) -> dict[str, tuple[int, int]]:
    """The run's headline metrics must be what its per_class_accuracy.csv counts give: top-1 over all videos,
    mean class accuracy over the classes. Returns {class: (videos, correct)}."""
    text = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="per_class_accuracy.csv",
                                                    tracking_uri=uri)).read_text()
    per_class = {r["class"]: (int(r["videos"]), int(r["correct"])) for r in csv.DictReader(text.splitlines())}
    videos = sum(v for v, _ in per_class.values())
    m = run.data.metrics
    assert m["num_videos"] == videos
    assert m["top1"] == pytest.approx(sum(c for _, c in per_class.values()) / videos)
    assert m["mean_class_accuracy"] == pytest.approx(np.mean([c / v for v, c in per_class.values() if v]))
    return per_class


def test_evaluate_registered_model(
    ray_local: None, dataset: Path, trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _with_broken(dataset, tmp_path)
    spec = f"models:/{MODEL}@champion"
    code = evaluate.main(["--model", spec, "--data", str(manifest), "--tracking-uri", trained.uri,
                          "--experiment", "evals", *CLIPS])
    assert code == 0
    printed = capsys.readouterr()
    out = printed.out
    test_rows = [r for r in csv.DictReader((dataset / "manifest.csv").open()) if r["split"] == "test"]
    # The unreadable video is said in one warning line, with its path; the metrics cover the others.
    (warning,) = [line for line in printed.err.splitlines() if line.startswith("warning: skipped")]
    assert warning.startswith(f"warning: skipped 1 unreadable test video, metrics over the other {len(test_rows)}: "
                              f"{tmp_path / 'broken.mp4'} (")
    client = MlflowClient(trained.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("evals").experiment_id])
    assert run.info.run_id in out and "top-1 %" in out
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert m["top5"] == 1.0  # 3 classes: always in the top 5
    assert m["skipped_videos"] == 1 and m["num_videos"] == len(test_rows)
    per_class = _check_against_per_class(run, trained.uri)
    assert {c: videos for c, (videos, _) in per_class.items()} == Counter(r["label"] for r in test_rows)
    tags = run.data.tags
    model_id = tags["vidssl.model_id"]
    assert tags["vidssl.evaluated_model"] == spec
    assert (tags["vidssl.model_name"], tags["vidssl.model_version"]) == (MODEL, "1")
    assert tags["vidssl.training_run"] == trained.run_id
    assert run.data.params["clips"] == "2" and run.data.params["crops"] == "3"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "per_class_accuracy.csv", "confusion.png", "skipped_videos.tsv"}
    skipped = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="skipped_videos.tsv",
                                                       tracking_uri=trained.uri)).read_text()
    assert skipped.startswith(str(tmp_path / "broken.mp4") + "\t")
    assert client.get_model_version(MODEL, "1").tags["vidssl.evaluation_run"] == run.info.run_id
    linked = {x.key: x.run_id for x in client.get_logged_model(model_id).metrics}
    assert linked["top1"] == run.info.run_id


def test_evaluate_checkpoint_on_a_folder(ray_local: None, dataset: Path, trained: Trained) -> None:
    code = evaluate.main(["--model", str(trained.checkpoint), "--data", str(dataset), "--tracking-uri",
                          trained.uri, "--experiment", "evals-ckpt", *CLIPS])
    assert code == 0
    client = MlflowClient(trained.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("evals-ckpt").experiment_id])
    assert run.data.metrics["num_videos"] == 12
    _check_against_per_class(run, trained.uri)
    assert run.data.tags["vidssl.checkpoint"] == str(trained.checkpoint)
    assert "vidssl.model_id" not in run.data.tags


def test_evaluate_with_no_readable_video_is_one_line_and_logs_no_run(
    ray_local: None, trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"not a video")
    listing = tmp_path / "broken.csv"
    listing.write_text(f"path,label\na.mp4,{trained.classes[0]}\nb.mp4,{trained.classes[1]}\n")
    assert evaluate.main(["--model", str(trained.checkpoint), "--data", str(listing), "--tracking-uri", trained.uri,
                          "--experiment", "evals-none", *CLIPS]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: none of the 2 videos of the {listing} decodes (e.g. {tmp_path / 'a.mp4'}: ")
    assert "Traceback" not in err
    assert MlflowClient(trained.uri).get_experiment_by_name("evals-none") is None


def test_evaluate_rejects_unknown_class_and_bad_spec(
    dataset: Path, trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    video = next((dataset / trained.classes[0]).glob("*.mp4"))
    manifest = tmp_path / "odd.csv"
    manifest.write_text(f"path,label\n{video},{trained.classes[0]}\n{video},juggling\n")
    args = ["--data", str(manifest), "--tracking-uri", trained.uri, *CLIPS]
    assert evaluate.main(["--model", str(trained.checkpoint), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'juggling'" in err and str(manifest) in err
    assert evaluate.main(["--model", "models:/missing@champion", *args]) == 2
    assert "models:/missing@champion" in capsys.readouterr().err


def test_predict_folder_with_unreadable_files_then_out_protection(
    ray_local: None, dataset: Path, trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    videos = tmp_path / "videos"
    shutil.copytree(dataset, videos, ignore=shutil.ignore_patterns("*.csv", "*.txt"))
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "nested").mkdir()
    (videos / "nested" / "text.mp4").write_text("not a video\n" * 50)
    (videos / "notes.txt").write_text("ignored: not a video extension")
    out = tmp_path / "pred.parquet"
    spec = f"models:/{MODEL}@champion"
    base = ["--model", spec, "--tracking-uri", trained.uri, "--out", str(out), "--clips", "2", "--crops", "3"]
    assert predict.main([*base, "--videos", str(videos), "--top-k", "2", "--all-probs"]) == 0
    table = pq.read_table(out)
    rows = {r["path"]: r for r in table.to_pylist()}
    assert len(rows) == table.num_rows == 14
    bad = {str(videos / "empty.mp4"), str(videos / "nested" / "text.mp4")}
    assert {p for p, r in rows.items() if r["error"] is not None} == bad
    assert all(p in rows[p]["error"] for p in bad)
    assert all(rows[p]["label"] is None and rows[p]["probs"] is None for p in bad)
    classes = trained.classes
    for path, r in rows.items():
        assert (r["model"], r["model_version"]) == (spec, "1") and r["model_id"].startswith("m-")
        if path in bad:
            continue
        assert len(r["top_labels"]) == len(r["top_probs"]) == 2
        assert r["label"] == r["top_labels"][0] and r["confidence"] == r["top_probs"][0] >= r["top_probs"][1]
        assert sum(r["probs"]) == pytest.approx(1.0, abs=1e-4)
        assert r["confidence"] == pytest.approx(max(r["probs"]))
        assert r["label"] == classes[int(np.argmax(r["probs"]))]
    assert table.schema.metadata[b"vidssl.classes"].decode() == str(classes).replace("'", '"')

    before = out.read_bytes()
    assert predict.main([*base, "--videos", str(videos)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before

    listing = tmp_path / "list.csv"
    listing.write_text(f"path\nvideos/{classes[1]}/{classes[1]}_000.mp4\nvideos/gone.mp4\n")
    assert predict.main([*base, "--videos", str(listing), "--overwrite", "--model", str(trained.run_folder)]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 2 and "probs" not in table.column_names
    errors = dict(zip(table["path"].to_pylist(), table["error"].to_pylist(), strict=True))
    assert errors[str(videos / classes[1] / f"{classes[1]}_000.mp4")] is None
    assert "gone.mp4" in errors[str(videos / "gone.mp4")]
    assert set(table["model_version"].to_pylist()) == {None}
    assert not list(tmp_path.glob(".*.tmp"))
