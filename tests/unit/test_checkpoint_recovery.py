"""A checkpoint whose state file does not load (cut short, zero bytes, not a torch file) is skipped with a warning
naming it and the newest intact one is used; with none intact, and with a damaged run record, the entry points
answer one line (exit 2) instead of a traceback.

    .venv/bin/python -m pytest -q tests/unit/test_checkpoint_recovery.py
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from ssl_core.checkpoint import (
    STATE_FILE,
    CheckpointError,
    latest_checkpoint_dir,
    latest_intact_checkpoint,
    load_training_state,
    model_meta,
    newest_step_checkpoint,
    save_training_state,
    step_checkpoint_dir,
)
from ssl_core.config import ConfigError, load_config
from ssl_core.train_step import build_models, model_names
from workflows.runtime.resume import SNAPSHOT, choose_checkpoint, hand_over
from workflows.runtime.run_state import RUN_FILE, RunState

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
CFG = load_config(None, ["model.primary=small3d_w0.25", "algorithm.name=supervised"])
CLASSES = ["a", "b", "c"]


def save(directory: Path, step: int) -> Path:
    """A real (tiny) training checkpoint at `step`."""
    models = build_models(CFG, len(CLASSES))
    optimizer = torch.optim.SGD([p for m in models.values() for p in m.parameters()], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    save_training_state(directory, models=models, optimizer=optimizer, scheduler=scheduler, step=step,
                        algorithm_state={}, model_names=model_names(CFG), num_classes=len(CLASSES),
                        meta=model_meta(CFG, CLASSES))
    return directory


def damage(directory: Path, how: str) -> Path:
    path = directory / STATE_FILE
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "text": b"not a torch file\n"}[how])
    return path


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """storage/run with intact checkpoints at steps 2 and 4 (copied per test, so each may damage its own)."""
    run = tmp_path_factory.mktemp("storage") / "run"
    for step in (2, 4):
        save(step_checkpoint_dir(run, step), step)
    return run


@pytest.fixture
def run(run_folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "storage" / "run"
    shutil.copytree(run_folder, copy)
    return copy


@pytest.mark.parametrize("how", ["truncated", "empty", "text"])
def test_an_unreadable_state_file_is_a_checkpoint_error_naming_it(run: Path, how: str) -> None:
    path = damage(run / "checkpoint_000004", how)
    with pytest.raises(CheckpointError, match=f"^{path} does not load") as err:
        load_training_state(path.parent)
    assert "\n" not in str(err.value)


def test_a_run_folder_falls_back_to_the_newest_intact_checkpoint_with_a_warning(run: Path) -> None:
    bad = damage(run / "checkpoint_000004", "truncated")
    warnings: list[str] = []
    directory, state = latest_intact_checkpoint(run, warnings.append)
    assert directory == run / "checkpoint_000002" and state["step"] == 2
    assert len(warnings) == 1 and str(bad) in warnings[0] and "\n" not in warnings[0]
    assert latest_checkpoint_dir(run, lambda _: None) == run / "checkpoint_000002"
    # a checkpoint directory named on its own is not replaced by another one
    with pytest.raises(CheckpointError, match=str(bad)):
        latest_intact_checkpoint(bad.parent)


def test_no_intact_checkpoint_is_an_error_naming_the_run_folder(run: Path) -> None:
    damage(run / "checkpoint_000004", "truncated")
    damage(run / "checkpoint_000002", "empty")
    with pytest.raises(CheckpointError, match=f"run folder {run}: none of its 2 checkpoints loads"):
        latest_intact_checkpoint(run, lambda _: None)


def test_resume_latest_of_the_ray_free_runner_skips_an_unreadable_newest_checkpoint(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ssl_core.loop import resume_point

    bad = damage(run / "checkpoint_000004", "truncated")
    assert newest_step_checkpoint(run.parent, stage=None)[0] == run / "checkpoint_000002"
    assert resume_point(run.parent, "latest") == run / "checkpoint_000002"
    assert resume_point(run.parent, str(run)) == run / "checkpoint_000002"
    err = capsys.readouterr().err
    assert err.count(f"warning: skipping checkpoint {bad.parent}") == 3


def test_the_ray_free_runner_exits_2_with_one_line_when_no_checkpoint_loads(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ssl_core.loop import main

    damage(run / "checkpoint_000004", "truncated")
    damage(run / "checkpoint_000002", "text")
    for which in ("latest", str(run)):
        assert main(["--config", str(DEMO), "--set", f"output.storage={run.parent}", "--resume", which]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(run) in errors[0] and "Traceback" not in errors[0]


def ray_name(minute: int) -> str:
    return f"checkpoint_2026-12-06_06-{minute:02d}-00.000000"


def ray_run(run: Path) -> Path:
    """The run folder as Ray Train leaves it: timestamped checkpoints and its record naming the latest."""
    (run / "checkpoint_000002").rename(run / ray_name(1))
    (run / "checkpoint_000004").rename(run / ray_name(2))
    (run / SNAPSHOT).write_text(json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": ray_name(2)}}))
    return run


def test_the_ray_driver_hands_the_newest_intact_checkpoint_and_sets_ray_trains_record_aside(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = ray_run(run)
    record = (run / SNAPSHOT).read_text()
    intact = choose_checkpoint(run)
    assert intact is not None and intact.directory == run / ray_name(2) and intact.step == 4 and not intact.handed
    assert hand_over(run, intact) is None and (run / SNAPSHOT).read_text() == record  # Ray Train's own pick

    bad = damage(run / ray_name(2), "truncated")
    point = choose_checkpoint(run)
    assert point is not None and point.directory == run / ray_name(1) and point.step == 2 and point.handed
    assert hand_over(run, point) == str(run / ray_name(1))
    assert not (run / SNAPSHOT).exists()
    [aside] = run.glob(f"{SNAPSHOT}.set-aside-*")
    assert aside.read_text() == record  # kept, not deleted
    assert bad.exists()  # the unreadable checkpoint stays for its owner to look at
    out = capsys.readouterr()
    assert f"warning: skipping checkpoint {bad.parent}" in out.err
    assert f"resuming from {run / ray_name(1)} at step 2" in out.out


def test_the_ray_driver_refuses_a_run_with_no_intact_checkpoint(run: Path) -> None:
    run = ray_run(run)
    damage(run / ray_name(1), "empty")
    damage(run / ray_name(2), "truncated")
    with pytest.raises(CheckpointError, match=f"run folder {run}: none of its 2 checkpoints loads"):
        choose_checkpoint(run, lambda _: None)
    assert (run / SNAPSHOT).exists()  # nothing moved
    assert choose_checkpoint(run.parent / "no-checkpoints-yet") is None


@pytest.mark.parametrize("text", ['{"name": "run", "mlflow_run_id": "ab', "", "[1, 2]", '{"name": "run"}'])
def test_a_damaged_run_record_is_a_one_line_error_naming_the_file(tmp_path: Path, text: str) -> None:
    (tmp_path / RUN_FILE).write_text(text)
    with pytest.raises(ConfigError, match=f"^{tmp_path / RUN_FILE} .*start a new run without --resume") as err:
        RunState.load(tmp_path)
    assert "\n" not in str(err.value)


def test_train_resume_latest_on_a_damaged_run_record_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from workflows.train import main

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / RUN_FILE).write_text('{"name": "run", "mlflow_')
    assert main(["--config", str(DEMO), "--set", f"output.storage={tmp_path}", "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'run' / RUN_FILE} is not valid JSON" in err and "Traceback" not in err


def test_evaluate_and_predict_fall_back_in_a_run_folder_and_refuse_a_bad_checkpoint(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from workflows.evaluate import main as evaluate
    from workflows.predict import main as predict
    from workflows.runtime.inference import InferenceError, load_for_inference

    bad = damage(run / "checkpoint_000004", "truncated")
    loaded = load_for_inference(str(run), None)
    assert loaded.source["checkpoint"] == str(run / "checkpoint_000002") and loaded.source["step"] == 2
    assert f"warning: skipping checkpoint {bad.parent}" in capsys.readouterr().err
    with pytest.raises(InferenceError, match=f"^{bad} does not load"):
        load_for_inference(str(bad.parent), None)

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "clip.mp4").write_bytes(b"")
    code = predict(["--model", str(bad.parent), "--videos", str(videos), "--out", str(tmp_path / "p.parquet")])
    err = capsys.readouterr().err
    assert code == 2 and f"error: {bad} does not load" in err and "Traceback" not in err
    code = evaluate(["--model", str(bad.parent), "--data", str(videos), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err
    assert code == 2 and f"error: {bad} does not load" in err and "Traceback" not in err


def test_pretrain_resume_names_a_damaged_run_record_instead_of_resuming_an_older_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from workflows.pretrain import main

    older = tmp_path / "older"
    older.mkdir()
    RunState("older", older, "id", "sqlite:///x.db", {"pretrain": {}}).save()
    os.utime(older / RUN_FILE, (1, 1))
    (tmp_path / "newer").mkdir()
    (tmp_path / "newer" / RUN_FILE).write_text('{"name": "newer", "con')
    config = Path(__file__).resolve().parents[2] / "configs" / "pretrain_demo.yaml"
    for which in ("latest", "newer"):
        assert main(["--config", str(config), "--set", f"output.storage={tmp_path}", "--resume", which]) == 2
        err = capsys.readouterr().err
        assert f"error: {tmp_path / 'newer' / RUN_FILE} is not valid JSON" in err and "Traceback" not in err
