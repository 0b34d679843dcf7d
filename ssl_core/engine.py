"""The step loop of every training and pretraining run, with Ray or without: seed, build (and resume), then
steps from the start step with window metrics kept on the device, and the log / evaluation / checkpoint
events when they are due. What differs between runs (the step, the evaluation, where reports and checkpoints
go) comes in as a few plain functions (Hooks); the loop itself is `run_steps`, read top to bottom.

    python -m ssl_core.loop --config configs/demo.yaml        # Ray-free training over this loop
    python -m ssl_core.pretrain --config configs/pretrain_demo.yaml
    python -m workflows.train --config configs/demo.yaml      # the Ray Train worker over the same loop
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ssl_core.metrics import WindowMeans


@dataclass(frozen=True)
class Due:
    """What happens after one step."""

    log: bool
    evaluate: bool
    checkpoint: bool
    last: bool

    @property
    def report(self) -> bool:
        return self.log or self.evaluate or self.checkpoint


@dataclass(frozen=True)
class Schedule:
    """When the events fall: every `*_every` steps (counted from step 0, so a resumed run keeps them) and at
    the last step. eval_every = 0: evaluation at the last step only."""

    iterations: int
    log_every: int
    eval_every: int
    checkpoint_every: int

    def due(self, done: int) -> Due:  # done: steps completed
        last = done == self.iterations
        return Due(log=done % self.log_every == 0 or last,
                   evaluate=bool(self.eval_every and done % self.eval_every == 0) or last,
                   checkpoint=done % self.checkpoint_every == 0 or last, last=last)


@dataclass
class Report:
    """One report: `metrics` is everything logged at this step (window means, perf/..., lr, evaluation,
    step last); `window` the window means alone; `seconds` the window's time (evaluation and checkpoints of
    the previous report excluded)."""

    step: int
    metrics: dict[str, float]
    window: dict[str, float]
    due: Due
    seconds: float


def local_means(sums: Mapping[str, float], counts: Mapping[str, int]) -> dict[str, float]:
    """Each window metric's mean (nan for one never seen, e.g. pseudo-label accuracy with nothing above tau)."""
    return {k: sums[k] / counts[k] if counts[k] else math.nan for k in sums}


def _nothing() -> dict[str, float]:
    return {}


@dataclass
class Hooks:
    """What one run plugs into the loop.

    step(index) -> (0-d metric tensors left on the device, clips it trained on)
    report(Report): show / log / publish a report (the Ray worker also hands its checkpoint to Ray Train here)
    evaluate(done, last) -> eval metrics, when evaluation is due (an empty dict where this worker does not evaluate)
    checkpoint(Report): write a checkpoint, when one is due (after `report`)
    extras() -> per-report numbers beside the window's (lr, skipped videos)
    reduce(sums, counts) -> window means (the Ray worker averages over its workers with all_reduce)
    after_step(done): after every step (the progress bar's counter)
    workers: how many workers train the same steps (clips/s is the total); it_per_s: add perf/it_per_s."""

    step: Callable[[int], tuple[Mapping[str, Tensor], int]]
    report: Callable[[Report], None]
    evaluate: Callable[[int, bool], dict[str, float]] | None = None
    checkpoint: Callable[[Report], None] | None = None
    extras: Callable[[], dict[str, float]] = _nothing
    reduce: Callable[[Mapping[str, float], Mapping[str, int]], dict[str, float]] = local_means
    after_step: Callable[[int], None] | None = None
    workers: int = 1
    it_per_s: bool = False


@dataclass
class Finished:
    """What the loop did: steps from `start_step`, clips, seconds (the windows' time), the last report."""

    start_step: int
    steps: int = 0
    clips: int = 0
    seconds: float = 0.0
    last: Report | None = None


def run_steps(hooks: Hooks, schedule: Schedule, start_step: int) -> Finished:
    """Steps start_step .. schedule.iterations - 1, and a report (then a checkpoint) whenever one is due."""
    finished = Finished(start_step)
    window = WindowMeans()
    window_start, window_steps, window_clips = time.perf_counter(), 0, 0
    for step in range(start_step, schedule.iterations):
        metrics, clips = hooks.step(step)
        window.add(metrics)
        window_steps += 1
        window_clips += clips
        done = step + 1
        if hooks.after_step is not None:
            hooks.after_step(done)
        due = schedule.due(done)
        if not due.report:
            continue
        means = hooks.reduce(*window.totals())  # brings the window over from the device: its one sync
        seconds = max(time.perf_counter() - window_start, 1e-9)
        report = dict(means)
        report["perf/clips_per_s"] = window_clips * hooks.workers / seconds
        if hooks.it_per_s:
            report["perf/it_per_s"] = window_steps / seconds
        report.update(hooks.extras())
        if due.evaluate and hooks.evaluate is not None:
            report.update(hooks.evaluate(done, due.last))
        report["step"] = done  # last: a logged `step` means the whole report arrived (workflows.tracking.tracker)
        finished.last = Report(done, report, means, due, seconds)
        hooks.report(finished.last)
        if due.checkpoint and hooks.checkpoint is not None:
            hooks.checkpoint(finished.last)
        finished.steps += window_steps
        finished.clips += window_clips
        finished.seconds += seconds
        window_start, window_steps, window_clips = time.perf_counter(), 0, 0
    return finished


def run(seed: int, build: Callable[[], tuple[Hooks, int]], schedule: Schedule) -> Finished:
    """Seed torch, build the run (models, optimizer, a restored checkpoint: its hooks and the step to start
    from), then run_steps. A resumed run's build re-seeds where its streams must differ from the first start."""
    torch.manual_seed(seed)
    hooks, start_step = build()
    return run_steps(hooks, schedule, start_step)
