"""Self-training end to end through the real parts: a tiny Ray-free pretraining, then `python -m
workflows.self_train` on it with one round: the labels stage (Ray Data -> Ray Train), its head (workflows.train),
the head labelling the unlabeled train videos (Ray Data batch inference), a fresh stage on labeled + pseudo-labeled
videos, its head (which learns the set too); every stage a nested MLflow run under one parent.

    .venv/bin/python -m pytest -q tests/slow/test_e2e_self_train.py     # make test-slow (CI) runs it, ~2 min
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from mlflow import MlflowClient

from ssl_core.data.pseudo_labels import read_pseudo_labels
from ssl_core.data.splits import prepare_data
from ssl_core.pretrain.config import load_pretrain_config
from ssl_core.pretrain.local import run_local_pretrain
from workflows.runtime.run_state import RunState
from workflows.self_train import main
from workflows.specs.self_train import load_self_train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_one_round_labels_the_unlabeled_videos_and_trains_a_fresh_stage_on_them(
    ray_local: None, synth_dataset: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    sizes = ["data.num_frames=4", "data.size=40", "data.eval_clips=1", "augment.crop_size=32", "data.cache=off"]
    tiny = [f"data.root={synth_dataset}", "data.labeled_fraction=0.5", *sizes, "model.primary=frame2d_w0.25",
            "train.log_every=1", "train.warmup_iters=1", "train.iterations=2", "train.checkpoint_every=2",
            "pretrain.knn_every=2", "pretrain.probe_steps=0", "pretrain.hidden_dim=32", "pretrain.proj_dim=16",
            "train.batch_size=4", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "scaling.cpus_per_worker=0.5"]
    run_local_pretrain(load_pretrain_config(CONFIGS / "pretrain_appearance.yaml", tiny), decode_threads=1,
                       run_dir=tmp_path / "pretrain")
    head = [*sizes, "train.iterations=2", "train.batch_size=2", "train.eval_every=2", "train.checkpoint_every=2",
            "train.log_every=1", "train.ema_start=0", "train.warmup_iters=1", "scaling.cpus_per_worker=0.5"]
    overrides = [*tiny, f"model.init={tmp_path / 'pretrain'}", "pretrain.labeled_batch=2", "tracking.run_name=st",
                 f"output.storage={tmp_path / 'runs'}", "self_train.pseudo_labels.clips=1",
                 "self_train.pseudo_labels.top_fraction_per_class=null",
                 f"self_train.head_set=[{', '.join(head)}]"]
    assert main(["--config", str(CONFIGS / "selftrain_appearance.yaml"),
                 *(a for o in overrides for a in ("--set", o))]) == 0
    out = capfd.readouterr().out
    folder = tmp_path / "runs" / "st"
    assert f"final model: {folder / 'round-1-head'}" in out

    # The set: every unlabeled train video (min_confidence 0, no class balancing), none of the labeled or test split.
    stage = load_self_train(CONFIGS / "selftrain_appearance.yaml", overrides).stage
    split = folder / "round-0-stage" / "labeled_split.csv"
    data = prepare_data(load_pretrain_config(CONFIGS / "selftrain_appearance.yaml",
                                             [*overrides, f"data.labeled_split_file={split}"]).base, None)
    targets, meta = read_pseudo_labels(folder / "round-1" / "pseudo_labels.parquet", data.manifest.classes)
    assert set(targets) == {r.path for r in data.unlabeled} and len(targets) > 0
    assert meta["labeled_by"] == str(folder / "round-0-head") and stage.pretrain.objective_weight == 0

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    stage_run = client.get_run(RunState.load(folder / "round-1-stage").mlflow_run_id)
    # Round 1 learns the same labeled videos as round 0, plus the set.
    assert stage_run.data.params["data.labeled_split_file"] == str(split)
    assert stage_run.data.params["data.pseudo_labels"] == str(folder / "round-1" / "pseudo_labels.parquet")
    parent_id = stage_run.data.tags["mlflow.parentRunId"]
    assert stage_run.data.tags["vidssl.self_train"] == "st" and stage_run.data.tags["vidssl.round"] == "1"
    head_run = client.get_run(RunState.load(folder / "round-1-head").mlflow_run_id)
    assert head_run.data.tags["mlflow.parentRunId"] == parent_id
    assert head_run.data.params["model.init"] == str(folder / "round-1-stage")
    # Its head learns the set beside the split; round 0's the split alone.
    assert (head_run.data.params["algorithm.name"], head_run.data.params["data.pseudo_labels"]) == (
        "noisy_student_offline", str(folder / "round-1" / "pseudo_labels.parquet"))
    round0_head = client.get_run(RunState.load(folder / "round-0-head").mlflow_run_id)
    assert round0_head.data.params["algorithm.name"] == "supervised"
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "st"
    assert [m.step for m in client.get_metric_history(parent_id, "round/top1")] == [0, 1]
    (accuracy,) = client.get_metric_history(parent_id, "round/pseudo_accuracy")
    assert accuracy.step == 1 and 0 <= accuracy.value <= 1
    assert "round-1/pseudo_labels.parquet" in {a.path for a in client.list_artifacts(parent_id, "round-1")}
    rows = list(csv.DictReader(io.StringIO(Path(client.download_artifacts(parent_id, "rounds.csv",
                                                                          str(tmp_path))).read_text())))
    assert [r["round"] for r in rows] == ["0", "1"] and rows[1]["pseudo_size"] == str(len(targets))
