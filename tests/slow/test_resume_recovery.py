"""`--resume latest` through real Ray Train and a real MLflow SQLite store when the newest checkpoint's state file
is cut short: the run continues from the older intact checkpoint and ends FINISHED; `--resume latest` of a finished
run changes nothing (no training, no new model version, status FINISHED); with no intact checkpoint left, one line
and exit 2, the run still FINISHED.

    .venv/bin/python -m pytest -q tests/slow/test_resume_recovery.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from ssl_core.checkpoint import STATE_FILE
from workflows.runtime.resume import SNAPSHOT
from workflows.runtime.run_state import RUN_FILE, RunState, find_run
from workflows.train import main

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
MODEL = "recovery-primary"


def tiny_sets(dataset: Path, tmp: Path, *extra: str) -> list[str]:
    overrides = [
        f"data.root={dataset}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5",
        "data.num_frames=4", "data.size=40", "data.eval_clips=1", "augment.crop_size=32",
        "algorithm.name=supervised", "model.primary=small3d_w0.25",
        "train.iterations=4", "train.batch_size=4", "train.log_every=2", "train.eval_every=4",
        "train.checkpoint_every=2", "train.keep_checkpoints=2", "train.warmup_iters=1",
        "scaling.num_workers=1", "scaling.cpus_per_worker=0.5",
        f"tracking.uri=sqlite:///{tmp}/mlflow.db", "tracking.experiment=recovery", f"tracking.registered_model={MODEL}",
        f"output.storage={tmp}/runs", *extra,
    ]
    return [arg for o in overrides for arg in ("--set", o)]


def truncate(state_file: Path) -> None:
    data = state_file.read_bytes()
    state_file.write_bytes(data[: len(data) // 3])


def test_resume_skips_a_truncated_checkpoint_and_leaves_a_finished_run_alone(
    ray_local: None, synth_dataset: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    sets = tiny_sets(synth_dataset, tmp_path)
    assert main(["--config", str(DEMO), *sets]) == 0
    run_dir = find_run(tmp_path / "runs", "latest")
    state = RunState.load(run_dir)
    client = MlflowClient(state.tracking_uri)
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 1
    finished = client.get_run(state.mlflow_run_id).info
    assert finished.status == "FINISHED"
    record = (run_dir / RUN_FILE).read_text()
    capfd.readouterr()

    # A finished run: one line, exit 0; not trained, registered or marked again.
    assert main(["--config", str(DEMO), *sets, "--resume", "latest"]) == 0
    printed = capfd.readouterr()
    assert f"run {run_dir.name} finished at step 4" in printed.out and "Traceback" not in printed.err
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 1
    again = client.get_run(state.mlflow_run_id).info
    assert (again.status, again.end_time) == ("FINISHED", finished.end_time)
    assert (run_dir / RUN_FILE).read_text() == record

    # The newest checkpoint (step 4) cut short; two more steps asked for: continued from step 2.
    older, newest = sorted(p.parent for p in run_dir.glob(f"checkpoint_*/{STATE_FILE}"))
    truncate(newest / STATE_FILE)
    assert main(["--config", str(DEMO), *sets, "--set", "train.iterations=6", "--resume", "latest"]) == 0
    printed = capfd.readouterr()
    assert f"warning: skipping checkpoint {newest}: {newest / STATE_FILE} does not load" in printed.err
    assert f"resuming from {older} at step 2" in printed.out
    assert "Traceback" not in printed.err
    run = client.get_run(state.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["step"] == 6
    # Steps 3-4 were trained again from the step-2 checkpoint but MLflow already had step 4: logged once each.
    assert [m.step for m in client.get_metric_history(state.mlflow_run_id, "loss/total")] == [2, 4, 6]
    assert [p.name.split(".set-aside-")[0] for p in run_dir.glob(f"{SNAPSHOT}*")] == [SNAPSHOT, SNAPSHOT]
    assert (newest / STATE_FILE).exists()  # the damaged file stays for its owner
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 2  # the continued run's model

    # No intact checkpoint left: one line naming the run folder, exit 2, the MLflow run still FINISHED.
    for state_file in run_dir.glob(f"checkpoint_*/{STATE_FILE}"):
        state_file.write_bytes(b"")
    assert main(["--config", str(DEMO), *sets, "--set", "train.iterations=8", "--resume", "latest"]) == 2
    printed = capfd.readouterr()
    errors = [line for line in printed.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"run folder {run_dir}" in errors[0] and "Traceback" not in printed.err
    assert client.get_run(state.mlflow_run_id).info.status == "FINISHED"
