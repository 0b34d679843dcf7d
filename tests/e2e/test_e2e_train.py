"""End to end through the real parts: encoded mp4 files -> Ray Data -> Ray Train (2 workers, DDP)
-> a real MLflow SQLite store, read back afterwards. Then `--resume` continues the same run.

    .venv/bin/python -m pytest -q tests/e2e/test_e2e_train.py
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from ssl_core.checkpoint import latest_intact_checkpoint
from ssl_core.config import Config, load_config
from ssl_core.data import synthetic
from ssl_core.loop import run_local
from workflows.runtime.run_state import LOG_FILE, RUN_FILE, RunState, find_run
from workflows.runtime.training import run_training
from workflows.tracking.tracker import table_digest
from workflows.train import main

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


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


def _test_videos(dataset: Path) -> dict[str, int]:
    """Test videos of each class in the dataset's manifest."""
    rows = csv.DictReader((dataset / "manifest.csv").open())
    return dict(Counter(r["label"] for r in rows if r["split"] == "test"))


def _per_class_accuracy(client: MlflowClient, run_id: str) -> dict[str, dict[str, float]]:
    """eval/per_class_accuracy.csv of a run: {role: {class: accuracy}}."""
    text = Path(client.download_artifacts(run_id, "eval/per_class_accuracy.csv")).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    return {role: {r["class"]: float(r[role]) for r in rows} for role in rows[0] if role != "class"}


def _weighted_top1(accuracy: dict[str, float], videos: dict[str, int]) -> float:
    assert accuracy.keys() == videos.keys()
    return sum(accuracy[c] * n for c, n in videos.items()) / sum(videos.values())


def tiny_overrides(dataset: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        f"data.root={dataset}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5",
        "data.num_frames=4", "data.size=40", "data.eval_clips=2", "augment.crop_size=32",
        "train.iterations=6", "train.batch_size=4", "train.mu=1", "train.log_every=2",
        "train.eval_every=6", "train.checkpoint_every=3", "train.warmup_iters=2", "algorithm.tau=0.0",
        # the demo recipe's warm-up and EMA start, scaled to 6 steps: steps 3-6 train on pseudo-labels from the EMA
        "algorithm.unsup_warmup=2", "algorithm.unsup_rampup=2", "train.ema_start=2",
        "scaling.num_workers=2", "scaling.cpus_per_worker=0.5",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db", "tracking.experiment=e2e", "tracking.registered_model=e2e-primary",
        f"output.storage={tmp}/runs", *extra,
    ]


def tiny_config(dataset: Path, tmp: Path, *extra: str) -> Config:
    return load_config(DEMO, tiny_overrides(dataset, tmp, *extra))


def test_cmpl_two_workers_then_resume(
    ray_local: None, dataset: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_config(dataset, tmp_path)
    # The command a person runs (python -m workflows.train), its console checked below.
    sets = [arg for o in tiny_overrides(dataset, tmp_path) for arg in ("--set", o)]
    assert main(["--config", str(DEMO), *sets, "--baseline"]) == 0
    printed = capfd.readouterr()
    baseline_dir = find_run(tmp_path / "runs", "latest")
    run_dir = baseline_dir.parent / baseline_dir.name.removesuffix("-baseline")
    outcome = RunState.load(run_dir)

    # Ray's, Ray Data's, Ray Train's and MLflow's output went to the run's log file, not the console.
    lines = (printed.out + printed.err).splitlines()
    assert len(lines) <= 30, lines
    # broken.mp4 is a real problem: the clip cache and the run's summary warn about it, nothing else does
    expected = [line for line in lines if "broken.mp4" in line or "skipped 1 unreadable videos" in line]
    assert any("skipped 1 unreadable videos" in line and "broken.mp4 (" in line for line in expected), lines
    for line in lines:
        assert line in expected or not any(word in line for word in ("WARNING", "Error", "Traceback")), lines
    assert "step 6/6  evaluation: primary top-1" in printed.out and "step 3/6  checkpoint saved" in printed.out
    assert "model       top-1 %  top-5 %  mask rate %  pseudo-label acc %" in printed.out  # the closing table
    assert f"run folder: {run_dir}" in printed.out
    # --baseline: supervised on the same labeled split and budget, its row and the gain in the closing table
    assert f"(baseline: same data, labels, budget; run {baseline_dir.name})" in printed.out
    assert "points of top-1 over the baseline" in printed.out
    log_text = (run_dir / LOG_FILE).read_text()
    assert "RayTrainWorker" in log_text and "step 6/6 |" in log_text  # the workers' output, with rank 0's lines

    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    run = client.get_run(outcome.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["algorithm.name"] == "cmpl"
    assert run.data.params["scaling.num_workers"] == "2"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/total")]
    assert steps == [2, 3, 4, 6]  # every log_every, checkpoint_every and the last step
    per_class = _per_class_accuracy(client, run.info.run_id)
    for role in ("primary", "auxiliary"):
        top1 = client.get_metric_history(run.info.run_id, f"eval/top1_{role}")
        assert [m.step for m in top1] == [6]
        # every test video counted once: top-1 is the per-class accuracies weighted by the test videos of each class
        assert top1[0].value == pytest.approx(_weighted_top1(per_class[role], _test_videos(dataset)), abs=1e-4)
        assert client.get_metric_history(run.info.run_id, f"pseudo/mask_rate_{role}")
        # tau = 0 keeps every pseudo-label, so the quality metric is defined
        assert client.get_metric_history(run.info.run_id, f"pseudo/accuracy_{role}")
    assert client.get_metric_history(run.info.run_id, "pseudo/agreement")
    assert run.data.metrics["data/skipped_videos"] == 1.0
    baseline = client.get_run(run.data.tags["vidssl.baseline_run"])
    assert baseline.data.params["algorithm.name"] == "supervised" and baseline.info.run_name == baseline_dir.name
    assert baseline.data.tags["vidssl.baseline_of"] == run.info.run_id
    assert baseline.data.params["data.labeled_split_file"] == str(run_dir / "labeled_split.csv")  # the same labels
    assert run.data.metrics["baseline/top1_primary"] == baseline.data.metrics["eval/top1_primary"]

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "data")}
    assert {"config.yaml", "labeled_split.csv", "eval/confusion_primary.png", "eval/confusion_auxiliary.png",
            "eval/per_class_accuracy.csv", "data/skipped_videos.tsv"} <= artifacts
    versions = client.search_model_versions("name='e2e-primary'")
    assert [v.run_id for v in versions] == [run.info.run_id]
    # The data as MLflow datasets (the run's Datasets panel): the manifest and the labeled split, with digests.
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {f"{dataset.name}-manifest", f"{dataset.name}-labeled-split"}
    split_table = pd.read_csv(run_dir / "labeled_split.csv", dtype=str, keep_default_na=False)
    assert inputs[f"{dataset.name}-labeled-split"].dataset.digest == table_digest(split_table)
    manifest = inputs[f"{dataset.name}-manifest"].dataset
    assert len(manifest.digest) == 16 and json.loads(manifest.profile)["num_rows"] == 4 * 8 + 1  # + broken.mp4
    assert all({t.key: t.value for t in d.tags}["mlflow.data.context"] == "training" for d in inputs.values())

    split = (outcome.run_dir / "labeled_split.csv").read_text().splitlines()
    # 50% of each class's train videos: 6 -> 3, and 7 -> 4 for the class that also lists broken.mp4
    assert split[0] == "path,label" and len(split) == 1 + 3 * 3 + 4
    assert (outcome.run_dir / RUN_FILE).exists()

    resumed = run_training(cfg, resume=run_dir.name, overrides=["train.iterations=8"])
    assert resumed.mlflow_run_id == outcome.mlflow_run_id
    assert resumed.metrics["step"] == 8
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/total")]
    assert steps == [2, 3, 4, 6, 8]  # continued from the step-6 checkpoint: nothing repeated
    assert len(client.get_run(run.info.run_id).inputs.dataset_inputs) == 2  # logged once, at the start
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.parametrize(
    ("name", "models"),
    [
        ("fixmatch", {"primary", "auxiliary"}),  # the demo's fixmatch trains a temporal-gradient companion
        ("pseudo_label", {"primary"}),
        ("mean_teacher", {"primary", "teacher"}),  # the EMA teacher is evaluated too
        ("mixmatch", {"primary"}),
        ("meta_pseudo_labels", {"primary", "teacher"}),
        ("svformer", {"primary", "teacher"}),  # its EMA teacher too
    ],
)
def test_every_ssl_algorithm_trains_and_evaluates_its_models(
    dataset: Path, tmp_path: Path, name: str, models: set[str]
) -> None:
    """Through the Ray-free runner: the Ray Train worker runs the same engine and step
    (tests/e2e/test_engine_adapters.py shows both report the same metrics), so one Ray run per algorithm would
    only add Ray's start-up to each case. No supervised warm-up (the tiny recipe's 2 steps would be all of them):
    both steps learn from the unlabeled clips."""
    cfg = tiny_config(dataset, tmp_path, f"algorithm.name={name}", "scaling.num_workers=1", "algorithm.unsup_warmup=0",
                      "train.iterations=2", "train.checkpoint_every=2", "train.eval_every=2")
    steps: list[int] = []
    result = run_local(cfg, decode_threads=1, say=lambda _: None, on_report=lambda r: steps.append(r.step),
                       run_dir=tmp_path / "run")
    assert steps == [2]
    evaluated = {k.removeprefix("top1_") for k in result if k.startswith("top1_")}
    assert evaluated == models
    assert all(0.0 <= result[f"top1_{m}"] <= 100.0 for m in models)
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint_*")) == ["checkpoint_000002"]


def test_supervised_then_noisy_student_from_its_run_folder(ray_local: None, dataset: Path, tmp_path: Path) -> None:
    """A frozen teacher from a run folder (its latest checkpoint); tests/e2e/test_distill_workflow.py takes one from
    the Model Registry."""
    common = ("scaling.num_workers=1", "train.iterations=2", "train.checkpoint_every=2", "train.eval_every=2")
    teacher = run_training(tiny_config(dataset, tmp_path, "algorithm.name=supervised", *common,
                                       "tracking.registered_model=e2e-teacher"))
    assert "eval/top1_auxiliary" not in teacher.metrics
    student = run_training(tiny_config(dataset, tmp_path, "algorithm.name=noisy_student", *common,
                                       f"model.teacher={teacher.run_dir}", "model.primary=small3d_w0.5"))
    assert student.metrics["step"] == 2
    assert {"eval/top1_primary", "eval/top1_teacher"} <= set(student.metrics)


def test_baseline_of_a_one_worker_run_trains_in_the_driver(
    ray_local: None, dataset: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """One worker on this machine (the demo's case): the baseline is the same step in this process, with its own
    MLflow run linked to the SSL run, and its folder holds its config and log but nothing to resume."""
    overrides = tiny_overrides(dataset, tmp_path, "algorithm.name=pseudo_label", "scaling.num_workers=1",
                               "train.iterations=4", "train.eval_every=4", "train.checkpoint_every=4")
    assert main(["--config", str(DEMO), *[arg for o in overrides for arg in ("--set", o)], "--baseline"]) == 0
    printed = capfd.readouterr().out
    run_dir = find_run(tmp_path / "runs", "latest")  # the baseline's folder has no run file: not resumable
    baseline_dir = run_dir.parent / f"{run_dir.name}-baseline"
    assert not (baseline_dir / RUN_FILE).exists() and (baseline_dir / "config.yaml").exists()
    assert "step 4: " in (baseline_dir / LOG_FILE).read_text()  # the step lines: in the log, not on the console
    assert "in this process" in printed and "step 4: " not in printed
    assert f"(baseline: same data, labels, budget; run {baseline_dir.name})" in printed

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(RunState.load(run_dir).mlflow_run_id)
    baseline = client.get_run(run.data.tags["vidssl.baseline_run"])
    assert baseline.info.status == "FINISHED" and baseline.info.run_name == baseline_dir.name
    assert baseline.data.tags["vidssl.baseline_of"] == run.info.run_id
    assert baseline.data.params["algorithm.name"] == "supervised"
    assert baseline.data.params["data.labeled_split_file"] == str(run_dir / "labeled_split.csv")
    assert [m.step for m in client.get_metric_history(baseline.info.run_id, "loss/total")] == [2, 4]
    top1 = baseline.data.metrics["eval/top1_primary"]
    correct = top1 * sum(_test_videos(dataset).values())
    assert correct == pytest.approx(round(correct), abs=1e-6)  # a whole number of test videos right, none counted twice
    assert f"baseline: step 4/4  evaluation: primary top-1 {100 * top1:.1f} %" in printed
    assert run.data.metrics["baseline/top1_primary"] == baseline.data.metrics["eval/top1_primary"]
    assert client.search_model_versions("name='e2e-primary'")[0].run_id == run.info.run_id  # baseline unregistered


def test_tiny_vit_trains_fixmatch_through_workflows_train(
    ray_local: None, dataset: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """The zoo's ViT in the whole pipeline: FixMatch (with the demo's temporal-gradient companion), checkpoint,
    evaluation and registration; its clips are 4 x 32 px (two frame pairs, 2 x 2 tubes)."""
    overrides = tiny_overrides(dataset, tmp_path, "model.primary=vit_tiny", "algorithm.name=fixmatch",
                               "scaling.num_workers=1", "train.iterations=3", "train.eval_every=3",
                               "train.checkpoint_every=3")
    assert main(["--config", str(DEMO), *[arg for o in overrides for arg in ("--set", o)]]) == 0
    assert "fixmatch on" in capfd.readouterr().out
    _, state = latest_intact_checkpoint(find_run(tmp_path / "runs", "latest"))
    assert state["step"] == 3 and state["model_names"]["primary"] == "vit_tiny"
    assert "blocks.3.attn.qkv.weight" in state["models"]["primary"]
