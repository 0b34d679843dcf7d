"""Train one SSL run on Ray Train with MLflow tracking: the main job.

    python -m workflows.train --config configs/demo.yaml [--set algorithm.name=fixmatch] [--smoke-test]
    python -m workflows.train --config configs/demo.yaml --resume latest     # continue the newest run
    ray job submit --working-dir . -- python -m workflows.train --config configs/demo.yaml

The driver (workflows.runtime.training.run_training) validates the config, prepares the data (generating the
synthetic set if asked), writes the labeled split, opens the MLflow run, builds the Ray Data streams and fits a
TorchTrainer running workflows.runtime.train_worker.train_loop_per_worker. At the end it logs and registers the
primary model; this entry point prints a summary table. Everything a run makes lives in
`<output.storage>/<run name>/` and in MLflow. The console shows a progress bar, one line per evaluation and
checkpoint, and the table; what Ray, Ray Data, Ray Train and MLflow print goes to the run folder's driver.log
instead (--verbose: to the console too; workflows/console/terminal.py).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ssl_core.algorithms import get_algorithm
from ssl_core.config import from_dict, load_config
from ssl_core.user_errors import reports_user_errors
from workflows.baseline import run_baseline
from workflows.console import terminal
from workflows.runtime.resume import RunFinished
from workflows.runtime.run_state import LOG_FILE, RunState
from workflows.runtime.training import TrainOutcome, run_training
from workflows.tracking.tracker import ui_command

SMOKE_TEST = ("train.iterations=4", "train.log_every=2", "train.eval_every=4", "train.checkpoint_every=4")


def summary_table(outcome: TrainOutcome, roles: Sequence[str], baseline: TrainOutcome | None = None) -> str:
    """The closing table: each model's test accuracy and pseudo-label diagnostics; with a baseline, its row and
    the primary's gain over it."""

    def pct(metrics: Mapping[str, Any], key: str) -> str:
        value = metrics.get(key)
        return "   n/a" if value is None or value != value else f"{100 * value:6.1f}"

    m = outcome.metrics
    lines = [f"{'model':<10} {'top-1 %':>8} {'top-5 %':>8} {'mask rate %':>12} {'pseudo-label acc %':>19}"]
    for role in roles:
        lines.append(f"{role:<10} {pct(m, f'eval/top1_{role}'):>8} {pct(m, f'eval/top5_{role}'):>8} "
                     f"{pct(m, f'pseudo/mask_rate_{role}'):>12} {pct(m, f'pseudo/accuracy_{role}'):>19}")
    if baseline is not None:
        b = baseline.metrics
        lines.append(f"{'supervised':<10} {pct(b, 'eval/top1_primary'):>8} {pct(b, 'eval/top5_primary'):>8}"
                     f"   (baseline: same data, labels, budget; run {baseline.run_dir.name})")
        gain = m.get("eval/top1_primary", math.nan) - b.get("eval/top1_primary", math.nan)
        if gain == gain:
            lines.append(f"unlabeled clips bought the primary {100 * gain:+.1f} points of top-1 over the baseline")
    return "\n".join(lines)


@reports_user_errors()
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML experiment file (defaults apply to missing keys)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set algorithm.tau=0.9 (repeatable)")
    parser.add_argument("--resume", metavar="RUN|latest", help="continue a run from its latest checkpoint")
    parser.add_argument("--smoke-test", action="store_true", help="4 iterations, to check the wiring")
    parser.add_argument("--verbose", action="store_true",
                        help=f"also print what Ray, Ray Data, Ray Train and MLflow log (always in <run>/{LOG_FILE})")
    parser.add_argument("--baseline", action="store_true",
                        help="then train supervised on the same labeled split and budget, and compare")
    args = parser.parse_args(argv)
    with terminal.session(args.verbose):
        try:
            cfg = load_config(args.config, [*args.set, *(SMOKE_TEST if args.smoke_test else ())])
            outcome = run_training(cfg, resume=args.resume, overrides=args.set, stop_when_finished=True)
            baseline = None
            if args.baseline:
                baseline = run_baseline(args.config, [*args.set, *(SMOKE_TEST if args.smoke_test else ())], outcome)
        except RunFinished as done:
            print(done, flush=True)
            return 0
        cfg = from_dict(RunState.load(outcome.run_dir).config)
        print()
        print(f"{cfg.algorithm.name} on {cfg.data.root}: step {outcome.metrics.get('step')}")
        roles = get_algorithm(cfg.algorithm.name).roles_for(cfg.algorithm.resolved_params())
        print(summary_table(outcome, roles, baseline))
        print(f"run folder: {outcome.run_dir}  (log: {LOG_FILE})")
        print(f"MLflow run: {outcome.mlflow_run_id}  model: {outcome.model_uri}  version: {outcome.model_version}")
        print(f"review it:  {ui_command(outcome.tracking_uri)}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
