"""A small sweep end to end: real Ray Tune over real Ray Train runs on encoded mp4 files, a real MLflow
SQLite store read back afterwards (parent + nested trial runs, trials.csv, plots, the `champion` alias);
ASHA stops one trial for certain (WEAK: its scheduler sees it as the worst); then `--resume` of the finished
sweep re-runs nothing.

    .venv/bin/python -m pytest -q tests/e2e/test_e2e_sweep.py
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
import ray.tune.schedulers
from mlflow import MlflowClient
from ray.tune.schedulers import ASHAScheduler

from tests.tiny_runs import workflow_spec
from workflows.specs.sweep import load_sweep
from workflows.sweep import SWEEP_FILE, SweepState, run_sweep

METRIC = "eval/top1_primary"
WEAK = ("cmpl", 0.67)  # the grid's last point: two trials at a time, it starts once an earlier one has ended


class WeakPointASHA(ASHAScheduler):
    """ASHA as the sweep builds it, except that it sees WEAK's evaluations as below any accuracy. The tiny trials
    often tie (every one 33.3 % at the first rung), and ASHA stops only a trial below the rung's cutoff; WEAK
    reaches its first rung after an earlier trial recorded there, so ASHA stops it there for certain, through
    Tune's real stop of a running trial. What Tune records and the trial logs are its real results."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if (trial.config["algorithm.name"], trial.config["data.labeled_fraction"]) == WEAK and METRIC in result:
            result = {**result, METRIC: -1.0}
        return super().on_trial_result(tune_controller, trial, result)


@pytest.fixture(scope="module")
def sweep_run(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("sweep")
    sets = ["train.mu=1", "train.eval_every=2", "tracking.experiment=e2e-sweep",
            "tracking.registered_model=e2e-sweep-primary"]
    sweep_file = workflow_spec(tmp, 5, sets, "sweep", {
        "name": "tiny", "search": "grid",
        "space": {"algorithm.name": ["fixmatch", "cmpl"], "algorithm.tau": [0.5], "algorithm.lambda_u": [1.0],
                  "data.labeled_fraction": [0.34, 0.67]},
        "asha": {"enabled": True, "grace_period": 2, "reduction_factor": 2},
    })
    spec = load_sweep(sweep_file)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ray.tune.schedulers, "ASHAScheduler", WeakPointASHA)  # build_tuner imports it when called
        state, rows, champion = run_sweep(spec)
    return {"tmp": tmp, "spec": spec, "state": state, "rows": rows, "champion": champion,
            "client": MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")}


def trial_errors(tmp: Path) -> str:
    """Tune's error.txt of every failed trial, so a failure names its cause in the test report."""
    return "\n".join(f"{e.parent.name}:\n{e.read_text()}" for e in sorted(tmp.glob("runs/*/tune/*/error.txt")))


def test_parent_and_nested_trial_runs(sweep_run: dict) -> None:
    client, state = sweep_run["client"], sweep_run["state"]
    parent = client.get_run(state.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["vidssl.sweep"] == "tiny"
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{state.parent_run_id}'")
    assert len(children) == 4
    points = {(c.data.params["algorithm.name"], c.data.params["data.labeled_fraction"]) for c in children}
    assert points == {("fixmatch", "0.34"), ("fixmatch", "0.67"), ("cmpl", "0.34"), ("cmpl", "0.67")}
    # every trial ended as finished or stopped early by ASHA (marked KILLED), none left RUNNING or FAILED; WEAK
    # was stopped (the others may be too, by their real results, but not the first to reach the rung)
    status = {(c.data.params["algorithm.name"], float(c.data.params["data.labeled_fraction"])): c.info.status
              for c in children}
    assert set(status.values()) <= {"FINISHED", "KILLED"}, trial_errors(sweep_run["tmp"])
    assert status[WEAK] == "KILLED" and "FINISHED" in status.values()
    for c in children:
        steps = [m.step for m in client.get_metric_history(c.info.run_id, METRIC)]
        assert steps and steps == sorted(set(steps))
        if c.info.status == "FINISHED":
            assert steps[-1] == 4 and c.data.tags["vidssl.model_uri"].startswith("models:/")
        else:
            # Tune may act on a rung's result a little after the trial logged a later step, so a stopped
            # trial can have gone further than the rung that stopped it; it never logged its model.
            assert c.data.tags["vidssl.stopped"] == "asha" and "vidssl.model_uri" not in c.data.tags


def test_parent_holds_csv_and_plots(sweep_run: dict) -> None:
    client, state = sweep_run["client"], sweep_run["state"]
    names = {a.path for a in client.list_artifacts(state.parent_run_id)}
    assert {"trials.csv", "top1_vs_labeled_fraction.png", "tau_lambda_heatmap.png", "base_config.yaml"} <= names
    local = client.download_artifacts(state.parent_run_id, "trials.csv", str(sweep_run["tmp"]))
    rows = list(csv.DictReader(io.StringIO(Path(local).read_text())))
    assert len(rows) == 4
    assert {r["algorithm.name"] for r in rows} == {"fixmatch", "cmpl"}
    children = {c.info.run_id: c for c in client.search_runs(
        [client.get_run(state.parent_run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{state.parent_run_id}'")}
    top1 = [float(r["eval/top1_primary"]) for r in rows]
    assert top1 == [children[r["mlflow_run_id"]].data.metrics["eval/top1_primary"] for r in rows]  # each trial's own
    assert top1 == sorted(top1, reverse=True)  # best first


def test_champion_alias_points_at_the_best_finished_trial(sweep_run: dict) -> None:
    client, rows, champion = sweep_run["client"], sweep_run["rows"], sweep_run["champion"]
    version = client.get_model_version_by_alias("e2e-sweep-primary", "champion")
    assert version.version == champion.version
    finished = [r for r in rows if r["status"] == "FINISHED"]
    best = max(r["eval/top1_primary"] for r in finished)
    assert version.run_id in {r["mlflow_run_id"] for r in finished if r["eval/top1_primary"] == best}
    # the version shows the model's spec, as a training run's registration does
    assert version.tags["vidssl.architecture"] == "small3d" and "small3d (3 classes: " in version.description
    # trials log their model without registering it: only the champion has a registry version
    assert len(client.search_model_versions("name='e2e-sweep-primary'")) == 1


def test_resume_of_a_finished_sweep_reruns_nothing(sweep_run: dict) -> None:
    spec, state, client = sweep_run["spec"], sweep_run["state"], sweep_run["client"]
    assert SweepState.load(state.sweep_dir).parent_run_id == state.parent_run_id
    assert (state.sweep_dir / SWEEP_FILE).exists()
    _, rows, champion = run_sweep(spec, resume=True)
    assert sorted(r["mlflow_run_id"] for r in rows) == sorted(r["mlflow_run_id"] for r in sweep_run["rows"])
    assert champion.version == sweep_run["champion"].version  # the same champion, not a second copy
    children = client.search_runs([client.get_run(state.parent_run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{state.parent_run_id}'")
    assert len(children) == 4


def test_evaluate_and_predict_the_champion(sweep_run: dict) -> None:
    import pandas as pd

    from workflows import evaluate, predict

    tmp, client = sweep_run["tmp"], sweep_run["client"]
    uri = f"sqlite:///{tmp}/mlflow.db"
    champion = "models:/e2e-sweep-primary@champion"
    assert evaluate.main(["--model", champion, "--data", str(tmp / "synth" / "manifest.csv"), "--clips", "2",
                          "--crops", "3", "--tracking-uri", uri, "--experiment", "e2e-eval"]) == 0
    version = client.get_model_version_by_alias("e2e-sweep-primary", "champion")
    eval_run = client.get_run(version.tags["vidssl.evaluation_run"])
    assert eval_run.data.metrics["top5"] == 1.0  # 3 classes: always in the top 5
    assert eval_run.data.tags["vidssl.model_version"] == str(version.version)

    out = tmp / "predictions.parquet"
    assert predict.main(["--model", champion, "--videos", str(tmp / "synth"), "--out", str(out), "--clips", "2",
                         "--crops", "3", "--top-k", "2", "--tracking-uri", uri]) == 0
    table = pd.read_parquet(out)
    assert len(table) == 18 and table["error"].isna().all()
    assert set(table["model_version"].astype(str)) == {str(version.version)}
    assert all(len(labels) == 2 for labels in table["top_labels"])
    # The same views of the same videos: evaluate's top-1 is the share of test videos whose prediction is their class.
    predicted = {Path(p).name: label for p, label in zip(table["path"], table["label"], strict=True)}
    test = [r for r in csv.DictReader((tmp / "synth" / "manifest.csv").open()) if r["split"] == "test"]
    right = sum(predicted[Path(r["path"]).name] == r["label"] for r in test)
    assert eval_run.data.metrics["num_videos"] == len(test)
    assert eval_run.data.metrics["top1"] == pytest.approx(right / len(test))
