"""Noisy Student end to end: 2 rounds through real Ray Data inference, real Ray Train runs on encoded mp4
files and a real MLflow SQLite store, stopped after the first labeling stage and resumed from there.

    .venv/bin/python -m pytest -q tests/slow/test_e2e_noisy_student.py
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from ssl_core.data.manifest import load_manifest
from ssl_core.data.pseudo_labels import read_pseudo_labels
from tests.tiny_runs import workflow_spec
from workflows import noisy_student
from workflows.noisy_student import STATE_FILE, WorkflowState


@pytest.fixture(scope="module")
def workflow(ray_local: None, tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("noisy_student")
    sets = ["data.labeled_per_class=1", "data.labeled_fraction=null", "train.mu=2", "train.eval_every=4",
            "tracking.experiment=e2e-ns", "tracking.registered_model=e2e-ns"]
    spec_file = workflow_spec(tmp, 3, sets, "noisy_student", {
        "name": "ns", "rounds": 2,
        "teacher": {"algorithm.name": "supervised", "model.primary": "small3d_w0.5"},
        "student": {"model.dropout": 0.2},
        "students": [{"model.primary": "small3d_w0.5"}, {"model.primary": "small3d"}],
        "pseudo_labels": {"min_confidence": 0.0, "top_k_per_class": 3, "clips": 1},
    })
    root = tmp / "synth"
    args = ["--config", str(spec_file)]
    first = noisy_student.main([*args, "--until", "round-1-labels"])
    folder = tmp / "runs" / "ns"
    after_stop = json.loads((folder / STATE_FILE).read_text())["stages"]
    second = noisy_student.main([*args, "--resume"])
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    return {"tmp": tmp, "root": root, "spec_file": spec_file, "folder": folder, "first": first, "second": second,
            "after_stop": after_stop, "state": WorkflowState.load(folder), "client": client}


def test_stops_after_a_stage_and_resumes_without_redoing_it(workflow: dict) -> None:
    assert workflow["first"] == 0 and workflow["second"] == 0
    assert sorted(workflow["after_stop"]) == ["round-0-teacher", "round-1-labels"]
    stages = workflow["state"].stages
    assert list(stages) == ["round-0-teacher", "round-1-labels", "round-1-student", "round-2-labels",
                            "round-2-student"]
    # the resumed run kept what the first invocation produced (same MLflow runs, same set)
    for key in ("round-0-teacher", "round-1-labels"):
        assert stages[key]["mlflow_run_id"] == workflow["after_stop"][key]["mlflow_run_id"]
    runs = workflow["client"].search_runs(
        [workflow["client"].get_experiment_by_name("e2e-ns").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{workflow['state'].parent_run_id}'")
    assert sorted(r.info.run_name for r in runs) == sorted(stages)  # one run per stage, none repeated
    assert all(r.info.status == "FINISHED" for r in runs)


def test_pseudo_labeled_sets_are_filtered_stored_and_unlabeled_only(workflow: dict) -> None:
    manifest = load_manifest("csv", workflow["root"])
    split = {str(workflow["root"] / row["path"]) for row in
             csv.DictReader((workflow["folder"] / "labeled_split.csv").open())}
    test = {r.path for r in manifest.split("test")}
    for r in (1, 2):
        labels = workflow["state"].stages[f"round-{r}-labels"]
        targets, meta = read_pseudo_labels(labels["path"], manifest.classes)
        assert targets and not (set(targets) & (split | test))
        assert labels["candidates"] == len(manifest.split("train")) - len(split)
        table = pq.read_table(labels["path"]).to_pandas()
        assert (table.groupby("label").size() <= 3).all()  # top_k_per_class
        assert meta["labeled_by"] == labels["labeled_by"] and meta["round"] == r
        assert "true_label" not in table.columns  # the truth measures the set, it is never stored with it


def test_lineage_in_mlflow(workflow: dict) -> None:
    client, state = workflow["client"], workflow["state"]
    stages = state.stages
    teacher, student1, student2 = stages["round-0-teacher"], stages["round-1-student"], stages["round-2-student"]
    # each set was labeled by the model of the stage before it, and each student learned the set of its round
    assert stages["round-1-labels"]["labeled_by"] == f"models:/e2e-ns/{teacher['model_version']}"
    assert stages["round-2-labels"]["labeled_by"] == f"models:/e2e-ns/{student1['model_version']}"
    for r, student in ((1, student1), (2, student2)):
        labels = stages[f"round-{r}-labels"]
        run = client.get_run(student["mlflow_run_id"])
        assert run.data.tags["vidssl.labeled_by"] == labels["labeled_by"]
        assert run.data.tags["vidssl.pseudo_labels"] == labels["path"]
        assert run.data.params["algorithm.name"] == "noisy_student_offline"
        # the set, then what every training run lists: the manifest and the labeled split (workflows/train.py)
        digests = [d.dataset.digest for d in run.inputs.dataset_inputs]
        assert labels["digest"] in digests and len(digests) == 3
        version = client.get_model_version("e2e-ns", student["model_version"])
        assert version.tags["vidssl.round"] == str(r) and version.tags["vidssl.labeled_by"] == labels["labeled_by"]
        label_run = client.get_run(labels["mlflow_run_id"])
        assert label_run.data.metrics["pseudo_set/size"] == labels["size"]
        # the set's accuracy against the truth, which the synthetic layout gives: class/<class>_NNN.mp4
        table = pq.read_table(labels["path"]).to_pandas()
        truth = table["path"].map(lambda video: Path(video).parent.name)
        assert len(table) == labels["size"]
        assert label_run.data.metrics["pseudo_set/accuracy"] == pytest.approx((table["label_name"] == truth).mean())
        artifacts = {a.path for a in client.list_artifacts(label_run.info.run_id)}
        assert {"stats.json", "per_class.csv", "pseudo_labels"} <= artifacts
    assert student2["model"] == "small3d"  # the per-round student list: the last round's larger model
    parent = client.get_run(state.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["vidssl.final_model_uri"] == student2["model_uri"]
    rounds_csv = Path(client.download_artifacts(state.parent_run_id, "rounds.csv", str(workflow["tmp"])))
    assert [row["round"] for row in csv.DictReader(io.StringIO(rounds_csv.read_text()))] == ["0", "1", "2"]
    assert [m.step for m in client.get_metric_history(state.parent_run_id, "round/top1")] == [0, 1, 2]


def test_new_workflow_refuses_an_existing_folder(workflow: dict) -> None:
    assert noisy_student.main(["--config", str(workflow["spec_file"])]) == 2
