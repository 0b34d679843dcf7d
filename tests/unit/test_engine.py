"""The step loop (ssl_core.engine): which steps log, evaluate and checkpoint, a resumed start, the window means
(nan = no sample), the reduce hook, clips/s, and the seed -> build -> steps order.

    .venv/bin/python -m pytest -q tests/unit/test_engine.py
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pytest
import torch
from torch import Tensor

from ssl_core.engine import Hooks, Report, Schedule, local_means, run, run_steps


class Recorder:
    """Hooks that record what the loop asked for, in order."""

    def __init__(self, values: Mapping[int, Mapping[str, float]] | None = None, clips: int = 3) -> None:
        self.values = values or {}
        self.clips = clips
        self.events: list[tuple[str, int]] = []
        self.reports: list[Report] = []

    def step(self, index: int) -> tuple[dict[str, Tensor], int]:
        self.events.append(("step", index))
        row = self.values.get(index, {"loss/total": float(index)})
        return {k: torch.tensor(v) for k, v in row.items()}, self.clips

    def evaluate(self, done: int, last: bool) -> dict[str, float]:
        self.events.append(("evaluate", done))
        return {"eval/top1_primary": 0.5, **({"probe/top1": 0.25} if last else {})}

    def report(self, report: Report) -> None:
        self.events.append(("report", report.step))
        self.reports.append(report)

    def checkpoint(self, report: Report) -> None:
        self.events.append(("checkpoint", report.step))

    def hooks(self, **extra: object) -> Hooks:
        return Hooks(step=self.step, report=self.report, evaluate=self.evaluate, checkpoint=self.checkpoint,
                     **extra)  # type: ignore[arg-type]

    def steps_of(self, kind: str) -> list[int]:
        return [n for k, n in self.events if k == kind]


def test_the_schedule_reports_on_every_due_step_and_always_at_the_last() -> None:
    schedule = Schedule(iterations=10, log_every=3, eval_every=4, checkpoint_every=5)
    rec = Recorder()
    finished = run_steps(rec.hooks(), schedule, start_step=0)
    assert rec.steps_of("step") == list(range(10))
    assert rec.steps_of("report") == [3, 4, 5, 6, 8, 9, 10]
    assert rec.steps_of("evaluate") == [4, 8, 10]
    assert rec.steps_of("checkpoint") == [5, 10]
    due = {r.step: r.due for r in rec.reports}
    assert due[3].log and not due[3].evaluate and not due[3].checkpoint
    assert due[4].evaluate and not due[4].log
    assert due[10].log and due[10].evaluate and due[10].checkpoint and due[10].last
    # evaluate before the report that carries it, the checkpoint after the report
    assert rec.events.index(("evaluate", 10)) < rec.events.index(("report", 10)) < rec.events.index(("checkpoint", 10))
    assert finished.steps == 10 and finished.clips == 30 and finished.last is rec.reports[-1]


def test_eval_every_zero_evaluates_at_the_last_step_only() -> None:
    rec = Recorder()
    run_steps(rec.hooks(), Schedule(iterations=6, log_every=2, eval_every=0, checkpoint_every=100), start_step=0)
    assert rec.steps_of("evaluate") == [6]
    assert rec.steps_of("checkpoint") == [6]
    assert "probe/top1" in rec.reports[-1].metrics and "probe/top1" not in rec.reports[0].metrics


def test_a_resumed_run_keeps_the_schedule_of_a_fresh_one() -> None:
    schedule = Schedule(iterations=10, log_every=3, eval_every=4, checkpoint_every=5)
    rec = Recorder()
    finished = run_steps(rec.hooks(), schedule, start_step=5)
    assert rec.steps_of("step") == [5, 6, 7, 8, 9]
    assert rec.steps_of("report") == [6, 8, 9, 10]
    assert rec.steps_of("checkpoint") == [10]
    assert finished.start_step == 5 and finished.steps == 5
    # a run resumed at its end does nothing
    done = Recorder()
    assert run_steps(done.hooks(), schedule, start_step=10).last is None and done.events == []


def test_window_means_skip_nans_and_a_metric_never_seen_is_nan() -> None:
    values = {0: {"loss/total": 1.0, "pseudo/accuracy_primary": math.nan, "never": math.nan},
              1: {"loss/total": 3.0, "pseudo/accuracy_primary": 0.5, "never": math.nan},
              2: {"loss/total": 10.0, "pseudo/accuracy_primary": math.nan, "never": math.nan}}
    rec = Recorder(values)
    run_steps(rec.hooks(), Schedule(iterations=3, log_every=2, eval_every=0, checkpoint_every=100), start_step=0)
    first, last = rec.reports
    assert first.window["loss/total"] == 2.0 and first.window["pseudo/accuracy_primary"] == 0.5
    assert math.isnan(first.window["never"])
    assert last.window["loss/total"] == 10.0  # a new window after each report
    assert math.isnan(last.window["pseudo/accuracy_primary"])
    assert local_means({"a": 3.0, "b": 0.0}, {"a": 2, "b": 0})["a"] == 1.5


def test_report_keys_order_and_the_reduce_extras_and_rate_hooks() -> None:
    reduced: list[dict[str, float]] = []

    def reduce(sums: Mapping[str, float], counts: Mapping[str, int]) -> dict[str, float]:
        means = {k: sums[k] / counts[k] for k in sums}
        reduced.append(means)
        return {k: 2 * v for k, v in means.items()}  # stands in for an all_reduce over workers

    rec = Recorder()
    hooks = rec.hooks(reduce=reduce, extras=lambda: {"lr": 0.1}, workers=4, it_per_s=True)
    finished = run_steps(hooks, Schedule(iterations=4, log_every=2, eval_every=4, checkpoint_every=4), 0)
    assert reduced == [{"loss/total": 0.5}, {"loss/total": 2.5}]
    report = rec.reports[-1]
    assert report.metrics["loss/total"] == 5.0 and report.window == {"loss/total": 5.0}
    assert list(report.metrics) == ["loss/total", "perf/clips_per_s", "perf/it_per_s", "lr", "eval/top1_primary",
                                    "probe/top1", "step"]  # `step` last: MLflow's marker of a complete report
    # clips/s counts every worker's clips: 4 workers x 3 clips x 2 steps in the window
    assert report.metrics["perf/clips_per_s"] == pytest.approx(4 * 3 * report.metrics["perf/it_per_s"])
    assert report.metrics["perf/it_per_s"] == pytest.approx(2 / report.seconds)
    assert finished.seconds == pytest.approx(sum(r.seconds for r in rec.reports))


def test_run_seeds_then_builds_then_steps_from_the_built_start() -> None:
    rec = Recorder()
    drawn: list[float] = []

    def build() -> tuple[Hooks, int]:
        drawn.append(float(torch.rand(())))
        return rec.hooks(), 2

    run(7, build, Schedule(iterations=4, log_every=1, eval_every=0, checkpoint_every=4))
    torch.manual_seed(7)
    assert drawn == [float(torch.rand(()))]
    assert rec.steps_of("step") == [2, 3] and rec.steps_of("report") == [3, 4]
