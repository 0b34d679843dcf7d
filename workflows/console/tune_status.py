"""The console of a sweep (workflows.sweep): one line per trial event and one live status line.

    trial 6d0f1_00003 started: cmpl tau=0.8 lambda_u=1.0 labeled_fraction=0.1
    trial 6d0f1_00003 step 10: top1_primary 14.4 %
    trial 6d0f1_00003 stopped early by ASHA at step 10 (top1_primary 14.4 %)
    sweep  6/16 trials ended [03:12, 3 running, 7 pending, 4 stopped early, best top1_primary 18.8 % (6d0f1_00001)]

Tune's own progress tables are off (RunConfig(verbose=0)); this callback is saved with Tune's state, so it is a
module-level class whose bar is made on first use and never pickled.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from ray import tune
from tqdm import tqdm


def _pct(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f} %"


class TrialConsole(tune.Callback):
    def __init__(self, num_trials: int, metric: str, mode: str, iterations: int) -> None:
        self.num_trials = num_trials
        self.metric = metric
        self.mode = mode
        self.iterations = iterations
        self.stopped: set[str] = set()
        self._bar: Any = None
        self._refreshed = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_bar": None}

    # ---- lines
    @property
    def short_metric(self) -> str:
        return self.metric.split("/")[-1]

    def _write(self, text: str) -> None:
        tqdm.write(text, file=sys.stdout)

    @staticmethod
    def point(trial: Any) -> str:
        shown = []
        for key, value in sorted(trial.config.items()):
            name = key.split(".")[-1]
            shown.append(str(value) if name == "name" else f"{name}={value}")
        return " ".join(shown)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._write(f"trial {trial.trial_id} started: {self.point(trial)}")
        self._status(trials)

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        step = result.get("step")
        if self.metric in result and step is not None and step < self.iterations:
            self._write(f"trial {trial.trial_id} step {int(step)}: {self.short_metric} {_pct(result[self.metric])}")
        self._status(trials)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        step = last.get("step")
        value = f"{self.short_metric} {_pct(last.get(self.metric))}"
        if step is not None and step < self.iterations:
            self.stopped.add(trial.trial_id)
            self._write(f"trial {trial.trial_id} stopped early by ASHA at step {int(step)} ({value})")
        else:
            self._write(f"trial {trial.trial_id} finished: {value} at step {step}")
        self._status(trials)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._write(f"trial {trial.trial_id} failed; Tune restarts it")
        self._status(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._write(f"trial {trial.trial_id} failed (its error is in the sweep's log file)")
        self._status(trials)

    # ---- the status line
    def status_text(self, trials: list[Any]) -> str:
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.status] = counts.get(t.status, 0) + 1
        shown = [f"{counts.get('RUNNING', 0)} running",
                 f"{counts.get('PENDING', 0) + max(0, self.num_trials - len(trials))} pending"]
        stopped = sum(1 for t in trials if t.trial_id in self.stopped and t.status == "TERMINATED")
        if stopped:
            shown.append(f"{stopped} stopped early")
        if counts.get("ERROR"):
            shown.append(f"{counts['ERROR']} failed")
        scored = [(t.last_result[self.metric], t.trial_id) for t in trials
                  if t.last_result and isinstance(t.last_result.get(self.metric), (int, float))
                  and not math.isnan(t.last_result[self.metric])]
        if scored:
            value, trial_id = max(scored) if self.mode == "max" else min(scored)
            shown.append(f"best {self.short_metric} {_pct(value)} ({trial_id})")
        return ", ".join(shown)

    def _status(self, trials: list[Any], force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._refreshed < 1.0:
            return
        self._refreshed = now
        ended = sum(1 for t in trials if t.status in ("TERMINATED", "ERROR"))
        if self._bar is None:
            if not sys.stderr.isatty():
                return  # a pipe or a CI log: the event lines only
            from tqdm import tqdm

            from workflows.console.terminal import bar_size

            self._bar = tqdm(total=self.num_trials, desc="sweep", file=sys.stderr, **bar_size(sys.stderr),
                             bar_format="{desc} {n}/{total} trials ended [{elapsed}{postfix}]")
        self._bar.n = ended
        self._bar.set_postfix_str(self.status_text(trials), refresh=False)
        self._bar.refresh()

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self._status(trials, force=False)  # keeps the elapsed time moving

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if self._bar is not None:
            self._status(trials)
            self._bar.close()
            self._bar = None
