"""The console without Ray: the training bar and its event lines, where log records go, a sweep's trial lines.
What a real run prints is checked by tests/e2e/test_e2e_train.py (test_cmpl_two_workers_then_resume)."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from workflows.console import terminal
from workflows.console.tune_status import TrialConsole


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def report(step: int, t: float, **eval_: list[float]) -> dict:
    metrics = {"step": step, "loss/total": 2.5, "pseudo/mask_rate_primary": 0.25, "perf/clips_per_s": 30.0}
    for role, (top1, top5) in eval_.items():
        metrics[f"eval/top1_{role}"], metrics[f"eval/top5_{role}"] = top1, top5
    return terminal.progress_record(metrics, now=t)


def test_one_bar_with_eta_and_event_lines_above_it() -> None:
    bar, events = Terminal(), io.StringIO()
    progress = terminal.TrainingProgress(object(), total=100, desc="cmpl-1", file=bar, events=events)
    for step in range(1, 21):  # one step per second
        progress.handle({"kind": "step", "step": step, "t": 1000.0 + step})
    progress.handle(report(20, 1020.0, primary=[0.36, 0.815], auxiliary=[0.275, 0.78]))
    progress.handle({"kind": "checkpoint", "step": 20, "t": 1020.5})
    progress.bar.refresh()
    drawn = bar.getvalue()
    assert "20/100" in drawn and "loss 2.500" in drawn and "mask 25.0%" in drawn and "30.0 clips/s" in drawn
    assert "ETA 1:20" in drawn  # 80 steps left at 1 step/s
    assert "\n" not in drawn.strip("\n")  # redrawn in place (carriage returns), not a line per update
    assert events.getvalue().splitlines() == [
        "step 20/100  evaluation: primary top-1 36.0 % top-5 81.5 % | auxiliary top-1 27.5 % top-5 78.0 %"
        "  (loss 2.500, 30.0 clips/s)",
        "step 20/100  checkpoint saved",
    ]
    progress.__exit__(None, None, None)


def test_off_a_terminal_only_the_event_lines() -> None:
    pipe, events = io.StringIO(), io.StringIO()
    progress = terminal.TrainingProgress(object(), total=10, file=pipe, events=events)
    for step in range(1, 11):
        progress.handle({"kind": "step", "step": step, "t": float(step)})
    progress.handle(report(10, 10.0, primary=[0.5, 1.0]))
    assert progress.bar is None and pipe.getvalue() == ""
    assert events.getvalue().startswith("step 10/10  evaluation: primary top-1 50.0 % top-5 100.0 %")
    # no channel (a sweep's trial): nothing at all
    assert terminal.TrainingProgress(None, total=10, file=Terminal()).bar is None


def test_sender_throttles_step_records() -> None:
    sent: list[dict] = []
    channel = SimpleNamespace(put=SimpleNamespace(remote=sent.append))
    sender = terminal.ProgressSender(channel, interval_s=3600)
    for step in range(1, 50):
        sender.step(step)
    sender.report({"step": 50, "loss/total": 1.0, "perf/clips_per_s": 2.0})
    sender.checkpoint(50)
    assert [(r["kind"], r["step"]) for r in sent] == [("step", 1), ("report", 50), ("checkpoint", 50)]


def test_quiet_session_sends_library_logs_and_worker_output_to_the_log_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root_level = logging.getLogger().level
    with terminal.session(verbose=False), terminal.run_log(tmp_path / "driver.log") as log:
        logging.getLogger("vidssl.train").info("clip cache: on")
        logging.getLogger("vidssl.train").warning("skipped 1 unreadable videos")
        logging.getLogger("ray.data").info("Starting execution of Dataset labeled_0")
        logging.getLogger("mlflow.pytorch").warning("Saving pytorch model by Pickle")
        logging.getLogger("ray").error("a real error")
        terminal._worker_output({"pid": 7, "actor_name": "RayTrainWorker", "is_err": False,
                                "lines": ["step 6/6 | total 1.2"]})
        assert log.handler in logging.getLogger().handlers  # the file hangs on the root logger while open
    assert log.handler is None and logging.getLogger().level == root_level  # and comes off it after
    err = capsys.readouterr().err.splitlines()
    assert err == ["clip cache: on", "WARNING vidssl.train: skipped 1 unreadable videos", "ERROR ray: a real error"]
    text = (tmp_path / "driver.log").read_text()
    for line in ("Starting execution of Dataset labeled_0", "Saving pytorch model by Pickle",
                 "(RayTrainWorker pid=7) stdout step 6/6 | total 1.2", "clip cache: on"):
        assert line in text
    # restored: no handler of the session is left behind
    assert not any(isinstance(h, terminal._ConsoleHandler) for h in logging.getLogger().handlers)


def test_verbose_session_shows_other_libraries_logs(capsys: pytest.CaptureFixture[str]) -> None:
    with terminal.session(verbose=True):  # Ray's and MLflow's loggers keep their own console handlers
        logging.getLogger("matplotlib.font_manager").info("generated new fontManager")
    assert "INFO matplotlib.font_manager: generated new fontManager" in capsys.readouterr().err


def test_run_log_from_when_the_folder_is_known(tmp_path: Path) -> None:
    @terminal.with_run_log
    def run() -> None:
        logging.getLogger("vidssl.x").warning("before the folder")
        terminal.log_to(tmp_path / "run" / terminal.LOG_FILE)
        logging.getLogger("vidssl.x").warning("in the folder")

    run()
    logging.getLogger("vidssl.x").warning("after the run")
    assert [line.split(": ", 1)[1] for line in (tmp_path / "run" / terminal.LOG_FILE).read_text().splitlines()] == [
        "in the folder"]


def trial(trial_id: str, status: str, step: int | None = None, top1: float | None = None) -> SimpleNamespace:
    last = {} if step is None else {"step": step, "eval/top1_primary": top1}
    return SimpleNamespace(trial_id=trial_id, status=status, last_result=last,
                           config={"algorithm.name": "cmpl", "algorithm.tau": 0.8})


def test_sweep_prints_one_line_per_trial_event(capsys: pytest.CaptureFixture[str]) -> None:
    cb = TrialConsole(num_trials=4, metric="eval/top1_primary", mode="max", iterations=30)
    a, b = trial("a_00000", "RUNNING"), trial("a_00001", "RUNNING")
    cb.on_trial_start(0, [a], a)
    cb.on_trial_result(1, [a, b], a, {"step": 10, "eval/top1_primary": 0.125})
    a.status, a.last_result = "TERMINATED", {"step": 10, "eval/top1_primary": 0.125}
    cb.on_trial_complete(2, [a, b], a)
    b.status, b.last_result = "TERMINATED", {"step": 30, "eval/top1_primary": 0.1875}
    cb.on_trial_complete(3, [a, b], b)
    assert capsys.readouterr().out.splitlines() == [
        "trial a_00000 started: cmpl tau=0.8",
        "trial a_00000 step 10: top1_primary 12.5 %",
        "trial a_00000 stopped early by ASHA at step 10 (top1_primary 12.5 %)",
        "trial a_00001 finished: top1_primary 18.8 % at step 30",
    ]
    assert cb.status_text([a, b]) == "0 running, 2 pending, 1 stopped early, best top1_primary 18.8 % (a_00001)"


def test_closing_table_with_the_supervised_baseline_and_the_gain() -> None:
    from workflows.runtime.training import TrainOutcome
    from workflows.train import summary_table

    def outcome(name: str, metrics: dict[str, float]) -> TrainOutcome:
        return TrainOutcome(Path("runs") / name, "id", "sqlite://", metrics, "models:/m/1", None)

    run = outcome("cmpl-1", {"eval/top1_primary": 0.405, "eval/top5_primary": 0.9, "eval/top1_auxiliary": 0.84,
                             "pseudo/mask_rate_primary": 0.38, "pseudo/accuracy_primary": 0.937})
    base = outcome("cmpl-1-baseline", {"eval/top1_primary": 0.317, "eval/top5_primary": 0.8})
    lines = summary_table(run, ["primary", "auxiliary"], base).splitlines()
    assert lines[1].split() == ["primary", "40.5", "90.0", "38.0", "93.7"]
    assert lines[2].split()[:3] == ["auxiliary", "84.0", "n/a"]
    assert lines[3].split()[:3] == ["supervised", "31.7", "80.0"] and lines[3].endswith("run cmpl-1-baseline)")
    assert lines[4] == "unlabeled clips bought the primary +8.8 points of top-1 over the baseline"
    assert len(summary_table(run, ["primary"]).splitlines()) == 2  # no baseline: no row, no gain line
