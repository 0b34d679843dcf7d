"""The supervised reference of `workflows.train --baseline`: the same config, labeled split and iteration budget,
trained with plain cross-entropy on the labeled clips alone (raw weights, as the results table's supervised
rows), in its own MLflow run `<SSL run>-baseline`; the two runs name each other in tags and the SSL run gets
`baseline/top1_primary`, so the MLflow UI can compare them.

    python -m workflows.train --config configs/demo.yaml --baseline

Where the SSL run's one worker ran on this machine (Ray started in this process: the demo, any one-machine run),
the baseline runs the worker's step in this process (`ssl_core.loop.run_local`, the loop behind
`bench.accuracy_local`): supervised training is cheap, and most of its time through Ray Train would be the
start-up and the streams (on 2 cores the demo's 600 supervised iterations take ~3 min that way, ~0.5 min here).
On a cluster (RAY_ADDRESS) or with several workers it is a Ray Train run like the SSL run.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from mlflow import MlflowClient

from ssl_core.config import Config, dump_yaml, load_config
from ssl_core.data.splits import SPLIT_FILE
from ssl_core.engine import Report
from ssl_core.loop import run_local
from workflows.console import terminal
from workflows.runtime.run_state import LOG_FILE
from workflows.runtime.training import TrainOutcome, new_run_dir, run_training
from workflows.tracking.tracker import Tracker, run_tags

# The run's step lines go to its log file only (the console shows loggers named vidssl*).
log = logging.getLogger("ssl_core.loop")


def baseline_overrides(ssl_run_dir: Path) -> list[str]:
    """What turns the SSL run's config into its baseline's: supervised, raw weights, the same labeled split."""
    return ["algorithm.name=supervised", "train.ema_decay=0.0", "tracking.registered_model=null",
            f"tracking.run_name={ssl_run_dir.name}-baseline", f"data.labeled_split_file={ssl_run_dir / SPLIT_FILE}"]


def in_driver(cfg: Config) -> bool:
    """True where the SSL run's only worker shared this machine: Ray started in this process, one worker."""
    return not os.environ.get("RAY_ADDRESS") and cfg.scaling.num_workers == 1


def train_in_driver(cfg: Config, tracking_uri: str) -> TrainOutcome:
    """The baseline trained and evaluated in this process, recorded in its own MLflow run and run folder (its
    config and log; no checkpoints: nothing to resume in a run this short)."""
    name, run_dir = new_run_dir(cfg)
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    tags = {**run_tags(cfg, run_dir), "vidssl.trained_in": "driver"}
    tracker = Tracker.start(tracking_uri, cfg.tracking.experiment, name, tags)
    tracker.log_params(cfg.flat())
    tracker.log_text(dump_yaml(cfg), "config.yaml")
    device = "cuda" if cfg.scaling.use_gpu else "cpu"
    print(f"baseline: supervised, the same labeled clips and {cfg.train.iterations} iterations, in this process "
          f"(run {name})", flush=True)
    start = time.perf_counter()
    with terminal.run_log(run_dir / LOG_FILE):
        try:
            result = run_local(cfg, device=device, say=log.info, on_report=lambda report: log_window(tracker, report))
        except BaseException:
            tracker.finish("FAILED")
            raise
    metrics = {"step": float(cfg.train.iterations), "perf/clips_per_s": result["train_clips_per_s"]}
    metrics |= {f"eval/{key}": value for key, value in result.items() if key.startswith(("top1_", "top5_"))}
    tracker.log_metrics(metrics, cfg.train.iterations)
    tracker.finish()
    print(f"baseline: step {cfg.train.iterations}/{cfg.train.iterations}  evaluation: primary top-1 "
          f"{100 * metrics['eval/top1_primary']:.1f} % ({time.perf_counter() - start:.0f} s)", flush=True)
    return TrainOutcome(run_dir, tracker.run_id, tracking_uri, metrics, model_uri="", model_version=None)


def log_window(tracker: Tracker, report: Report) -> None:
    """A log window's means to MLflow (the baseline's own closing metrics follow at its end)."""
    if report.due.log:
        tracker.log_metrics({k: v for k, v in report.window.items() if v == v}, report.step)


def run_baseline(config_file: str | None, sets: Sequence[str], outcome: TrainOutcome) -> TrainOutcome:
    """Train the baseline of the SSL run `outcome` (made from `config_file` and the overrides `sets`) and link
    the two MLflow runs."""
    extra = baseline_overrides(outcome.run_dir)
    cfg = load_config(config_file, [*sets, *extra])
    if in_driver(cfg):
        baseline = train_in_driver(cfg, outcome.tracking_uri)
    else:
        baseline = run_training(cfg, overrides=[*sets, *extra])
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    client.set_tag(outcome.mlflow_run_id, "vidssl.baseline_run", baseline.mlflow_run_id)
    client.set_tag(baseline.mlflow_run_id, "vidssl.baseline_of", outcome.mlflow_run_id)
    for key in ("eval/top1_primary", "eval/top5_primary"):
        if key in baseline.metrics:
            client.log_metric(outcome.mlflow_run_id, key.replace("eval/", "baseline/"), baseline.metrics[key])
    return baseline
