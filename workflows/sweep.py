"""Ray Tune sweep over the confidence threshold tau, the unlabeled weight lambda and the labeled fraction.

    python -m workflows.sweep --config configs/sweep_demo.yaml --dry-run   # search space + trial count
    python -m workflows.sweep --config configs/sweep_demo.yaml             # run it (also: vidssl sweep ...)
    python -m workflows.sweep --config configs/sweep_demo.yaml --resume    # continue a stopped sweep
    python -m workflows.sweep --config configs/sweep_demo.yaml --name sweep-demo-2   # a second, new sweep
    ray job submit --working-dir . -- python -m workflows.sweep --config configs/sweep_demo.yaml

Each trial is a full training run (workflows.runtime.training.run_training: Ray Data + a Ray Train TorchTrainer),
started from a Tune function trial (Train V2's Tune integration); its evaluations reach Tune through a
Ray Train callback, so ASHA can stop weak trials early. MLflow: one parent run per sweep, one nested child
run per trial. At the end the parent holds `trials.csv`, the label-efficiency plot (top-1 vs labeled
fraction per algorithm) and the tau x lambda heatmap, and the best finished trial's primary model is
registered under `tracking.registered_model` with the alias `champion`. Everything lives in
`<output.storage>/<sweep.name>/` (Tune state in `tune/`, the trials' run folders in `trials/`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ssl_core.config import ConfigError, pin_paths
from ssl_core.data.splits import ensure_synthetic
from ssl_core.user_errors import reports_user_errors
from workflows.console import terminal
from workflows.runtime.ray_session import init_ray
from workflows.runtime.run_state import write_record
from workflows.specs.sweep import SweepSpec, check_name, load_sweep, trial_config

SWEEP_FILE = "vidssl_sweep.json"
LOG_FILE = "sweep.log"  # in the sweep folder: Tune's, Ray's and MLflow's logs and every trial's output
CHAMPION = "champion"
log = logging.getLogger("vidssl.sweep")


class SweepInterrupted(RuntimeError):
    """Tune stopped before every trial ended; its state is saved for `--resume`."""


@dataclass
class SweepState:
    """What a sweep needs to be resumed: its MLflow parent run and the base config its trials use."""

    sweep_dir: Path
    parent_run_id: str
    tracking_uri: str
    base: dict[str, Any]

    def save(self) -> None:
        payload = {"parent_run_id": self.parent_run_id, "tracking_uri": self.tracking_uri, "base": self.base}
        write_record(self.sweep_dir / SWEEP_FILE, payload)

    @classmethod
    def load(cls, sweep_dir: Path) -> SweepState:
        payload = json.loads((sweep_dir / SWEEP_FILE).read_text())
        return cls(sweep_dir, payload["parent_run_id"], payload["tracking_uri"], payload["base"])


def tune_space(spec: SweepSpec) -> dict[str, Any]:
    # here: Ray Tune takes seconds to import; --dry-run and --help do without it
    from ray import tune

    space: dict[str, Any] = {}
    for d in spec.space:
        if d.values is not None:
            space[d.key] = tune.grid_search(d.values) if spec.search == "grid" else tune.choice(d.values)
        else:
            assert d.bounds is not None
            low, high = d.bounds
            space[d.key] = {"uniform": tune.uniform(low, high), "loguniform": tune.loguniform(low, high),
                            "randint": tune.randint(int(low), int(high))}[str(d.distribution)]
    return space


def auto_concurrency(spec: SweepSpec) -> int:
    """Trials that fit the cluster at once: each needs its Train workers plus room for a decode task
    (Ray Data tasks starve, and the sweep stalls, if the workers take every CPU)."""
    # here: Ray takes a second to import; --dry-run and --help do without it
    import ray

    cfg = spec.base_config
    s = cfg.scaling
    free = ray.available_resources()
    fit = math.floor(free.get("CPU", 0) / (s.num_workers * s.cpus_per_worker + cfg.data.decode_cpus))
    if s.use_gpu:
        fit = min(fit, math.floor(free.get("GPU", 0) / s.num_workers))
    return max(1, fit)


def tune_metrics(report: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in report.items() if k.startswith(("eval/", "pseudo/")) or k == "step"}


def make_eval_report_callback(metric: str, iterations: int) -> Any:
    """A Ray Train callback that forwards each evaluation before the last (rank 0's report holding
    `metric`) to Tune; the last one is reported by the trial once its model is logged, because ASHA stops
    a trial that reaches its max_t and the stop would cut the run short of logging the model."""
    # here: Ray Tune takes seconds to import; --dry-run and --help do without it
    from ray.tune.integration.ray_train import TuneReportCallback

    class EvalReportCallback(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            report = metrics[0]  # rank 0 evaluates
            if metric in report and report.get("step", 0) < iterations:
                self._training_actor_item_queue.put(tune_metrics(report))

    return EvalReportCallback()


def run_trial(point: dict[str, Any], *, base: dict[str, Any], trials_dir: str, sweep_name: str,
              parent_run_id: str, metric: str) -> None:
    """One Tune trial = one training run, nested under the sweep's MLflow parent run. A trial restarted by
    `--resume` continues its own run folder from its latest checkpoint, into the same MLflow run."""
    # here: Ray Tune and the training driver (MLflow) take seconds to import; --dry-run and --help do without them
    from ray import tune

    from workflows.runtime.run_state import RUN_FILE
    from workflows.runtime.training import run_training

    trial_id = tune.get_context().get_trial_id()
    name = f"{sweep_name}-{trial_id}"
    # Only the champion is registered (by the driver); trials log their model without a registry version.
    cfg = trial_config(base, point, f"tracking.run_name={name}", f"output.storage={trials_dir}",
                       "tracking.registered_model=null")
    resume = name if (Path(trials_dir) / name / RUN_FILE).exists() else None
    tags = {"mlflow.parentRunId": parent_run_id, "vidssl.sweep": sweep_name, "vidssl.trial": trial_id,
            "vidssl.point": json.dumps(point, sort_keys=True)}
    # No progress bar: a trial runs in a Tune actor, and the sweep's console shows one line per trial event.
    outcome = run_training(cfg, resume=resume, extra_tags=tags, progress=False,
                           callbacks=[make_eval_report_callback(metric, cfg.train.iterations)])
    tune.report(tune_metrics(outcome.metrics))


def make_trainable(spec: SweepSpec, state: SweepState) -> Any:
    # here: Ray Tune takes seconds to import; --dry-run and --help do without it
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(run_trial, base=state.base, trials_dir=str(state.sweep_dir / "trials"),
                             sweep_name=spec.name, parent_run_id=state.parent_run_id, metric=spec.metric),
        # The trial function only drives a TorchTrainer, whose workers request their own resources (Tune
        # refuses an empty request, hence a token share).
        {"CPU": 0.01},
    )


def is_complete(spec: SweepSpec, state: SweepState) -> bool:
    """Every trial ended, judged from Tune's saved state: on Ctrl+C Tune saves the state with the running
    trials still RUNNING, then stops them, so the in-memory results would show them as ended."""
    # here: Ray Tune takes seconds to import; --dry-run and --help do without it
    from ray import tune

    saved = tune.Tuner.restore(str(state.sweep_dir / "tune"), trainable=make_trainable(spec, state)).get_results()
    return len(saved) >= spec.num_trials() and saved.num_terminated + saved.num_errors == len(saved)


def build_tuner(spec: SweepSpec, state: SweepState, resume: bool) -> Any:
    # here: Ray Tune takes seconds to import; --dry-run and --help do without it
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from workflows.console.tune_status import TrialConsole

    trainable = make_trainable(spec, state)
    tune_dir = state.sweep_dir / "tune"
    if resume and tune.Tuner.can_restore(str(tune_dir)):
        return tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True, restart_errored=True)
    cfg = spec.base_config
    scheduler = None
    if spec.asha.enabled:
        scheduler = ASHAScheduler(time_attr="step", max_t=cfg.train.iterations,
                                  grace_period=spec.asha.grace_period or cfg.train.eval_every,
                                  reduction_factor=spec.asha.reduction_factor)
    search_alg = None
    if spec.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch  # here: only an optuna search needs Optuna

        search_alg = OptunaSearch(seed=cfg.train.seed)
    return tune.Tuner(
        trainable,
        param_space=tune_space(spec),
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, scheduler=scheduler, search_alg=search_alg,
                                    num_samples=spec.num_samples,
                                    max_concurrent_trials=spec.max_concurrent_trials or auto_concurrency(spec)),
        # Tune's own tables off (verbose=0): TrialConsole prints one line per trial event and a status line.
        run_config=tune.RunConfig(name="tune", storage_path=str(state.sweep_dir), verbose=0, callbacks=[
            TrialConsole(spec.num_trials(), spec.metric, spec.mode, cfg.train.iterations)]),
    )


def trial_rows(client: Any, spec: SweepSpec, parent_run_id: str) -> list[dict[str, Any]]:
    """One row per trial from its MLflow child run: the sampled point, status, last evaluation."""
    runs = client.search_runs(
        [client.get_run(parent_run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10_000,
    )
    base = spec.base_config
    rows = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        point = json.loads(tags.get("vidssl.point", "{}"))
        row: dict[str, Any] = {
            "trial": tags.get("vidssl.trial", ""),
            "status": "STOPPED_EARLY" if tags.get("vidssl.stopped") == "asha" else run.info.status,
            "algorithm.name": point.get("algorithm.name", base.algorithm.name),
            "data.labeled_fraction": point.get("data.labeled_fraction", base.data.labeled_fraction),
        }
        row.update({d.key: point.get(d.key) for d in spec.space})
        row["step"] = int(metrics.get("step", 0))
        for key in (spec.metric, "eval/top1_primary", "eval/top5_primary"):
            row[key] = metrics.get(key, math.nan)
        row["mlflow_run_id"] = run.info.run_id
        row["model_uri"] = tags.get("vidssl.model_uri", "")
        rows.append(row)
    rows.sort(key=lambda r: (math.isnan(r[spec.metric]), -r[spec.metric] if spec.mode == "max" else r[spec.metric]))
    return rows


def close_stopped_runs(client: Any, parent_run_id: str, stopped_trials: set[str]) -> int:
    """Trials that ended without an error but whose run did not finish were stopped early by ASHA (Tune
    interrupts the trial mid-run): mark their MLflow runs KILLED and tagged, not RUNNING or FAILED."""
    runs = client.search_runs(
        [client.get_run(parent_run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status != 'FINISHED'",
    )
    closed = 0
    for run in runs:
        if run.data.tags.get("vidssl.trial") in stopped_trials:
            client.set_tag(run.info.run_id, "vidssl.stopped", "asha")
            client.set_terminated(run.info.run_id, status="KILLED")
            closed += 1
    return closed


def rows_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def crown_champion(client: Any, spec: SweepSpec, rows: list[dict[str, Any]], parent_run_id: str) -> Any:
    """Register the best finished trial's primary model and point the `champion` alias at it."""
    # here: MLflow takes seconds to import; --dry-run and --help do without it
    import mlflow

    finished = [r for r in rows if r["status"] == "FINISHED" and r["model_uri"] and not math.isnan(r[spec.metric])]
    if not finished:
        return None
    best = finished[0]  # rows are sorted best first
    name = str(spec.base_config.tracking.registered_model)
    # A resumed sweep whose best trial did not change keeps its version instead of registering a copy.
    same = [v for v in client.search_model_versions(f"name='{name}'") if v.source == best["model_uri"]]
    if same:
        version = same[0]
    else:
        # here: MLflow takes seconds to import; --dry-run and --help do without it
        from workflows.tracking.safe_model import SPEC_KEY, version_description, version_tags
        from workflows.tracking.tracker import registry_notes_to_log

        mlflow.set_tracking_uri(client.tracking_uri)
        with registry_notes_to_log():
            version = mlflow.register_model(best["model_uri"], name, tags={
                "vidssl.sweep": spec.name, "vidssl.trial": best["trial"], spec.metric: str(best[spec.metric])})
        # the model's spec on the version, as a training run's registration shows it
        model_spec = (mlflow.models.get_model_info(best["model_uri"]).metadata or {}).get(SPEC_KEY)
        if model_spec:
            client.update_model_version(name, version.version, description=version_description(model_spec))
            for key, value in version_tags(model_spec).items():
                client.set_model_version_tag(name, version.version, key, value)
    client.set_registered_model_alias(name, CHAMPION, version.version)
    client.set_tag(parent_run_id, "vidssl.champion", f"models:/{name}/{version.version}")
    client.set_tag(parent_run_id, "vidssl.champion_run", best["mlflow_run_id"])
    return version


def report(spec: SweepSpec, state: SweepState, results: Any) -> tuple[list[dict[str, Any]], Any]:
    # here: MLflow and matplotlib take seconds to import; --dry-run and --help do without them
    from mlflow import MlflowClient

    from workflows.tracking.plots import label_efficiency_figure, tau_lambda_heatmap

    client = MlflowClient(tracking_uri=state.tracking_uri)
    stopped_trials = {r.metrics.get("trial_id") for r in results if r.error is None and r.metrics}
    stopped = close_stopped_runs(client, state.parent_run_id, stopped_trials)
    if stopped:
        log.info("%d trials were stopped early by ASHA", stopped)
    rows = trial_rows(client, spec, state.parent_run_id)
    client.log_text(state.parent_run_id, rows_csv(rows), "trials.csv")
    finite = [r for r in rows if not math.isnan(r[spec.metric])]
    client.log_figure(state.parent_run_id, label_efficiency_figure(finite, spec.metric), "top1_vs_labeled_fraction.png")
    heatmap = tau_lambda_heatmap(finite, spec.metric)
    if heatmap is not None:
        client.log_figure(state.parent_run_id, heatmap, "tau_lambda_heatmap.png")
    champion = crown_champion(client, spec, rows, state.parent_run_id)
    client.set_terminated(state.parent_run_id, status="FINISHED")
    return rows, champion


def start_or_resume(spec: SweepSpec, resume: bool) -> SweepState:
    # here: MLflow takes seconds to import; --dry-run and --help do without it
    from workflows.tracking.tracker import Tracker, resolve_uri

    cfg = spec.base_config
    sweep_dir = Path(cfg.output.storage).expanduser().resolve() / spec.name
    if resume:
        if not (sweep_dir / SWEEP_FILE).exists():
            raise ConfigError(f"--resume: no sweep in {sweep_dir}")
        state = SweepState.load(sweep_dir)
        Tracker(state.tracking_uri, state.parent_run_id).client.update_run(state.parent_run_id, status="RUNNING")
        return state
    if sweep_dir.exists():
        raise ConfigError(f"sweep.name: {sweep_dir} already exists; --resume it or choose another sweep.name")
    uri = resolve_uri(cfg.tracking.uri)
    sweep_dir.mkdir(parents=True)
    parent = Tracker.start(uri, cfg.tracking.experiment, spec.name, {"vidssl.sweep": spec.name})
    parent.log_params({"sweep.search": spec.search, "sweep.num_samples": spec.num_samples, "sweep.metric": spec.metric,
                       "sweep.asha": spec.asha.enabled, **{f"sweep.space.{d.key}": d.describe() for d in spec.space}})
    parent.log_text(yaml.safe_dump(spec.base, sort_keys=False), "base_config.yaml")
    state = SweepState(sweep_dir, parent.run_id, uri, pin_paths(spec.base, uri))
    state.save()
    return state


@terminal.with_run_log
def run_sweep(spec: SweepSpec, *, resume: bool = False) -> tuple[SweepState, list[dict[str, Any]], Any]:
    state = start_or_resume(spec, resume)
    terminal.log_to(state.sweep_dir / LOG_FILE)
    # Generate the synthetic set once here, not in concurrent trials racing to write the same files.
    ensure_synthetic(trial_config(state.base, {}))
    init_ray()
    # Tune's newer output engine prints its configuration box and result paths even at verbose=0; the legacy
    # one prints nothing at 0, which leaves the console to TrialConsole.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    results = build_tuner(spec, state, resume).fit()
    for result in results:
        if result.error is not None:
            log.warning("trial %s failed: %s", result.path, str(result.error).splitlines()[0])
    if not is_complete(spec, state):
        # Interrupted (Ctrl+C, SIGTERM): Tune saved its state; unfinished trials are not "stopped early",
        # and there is no champion yet. `--resume` continues.
        raise SweepInterrupted(f"sweep {spec.name} interrupted before every trial ended; continue it with "
                               f"--resume (state in {state.sweep_dir})")
    rows, champion = report(spec, state, results)
    return state, rows, champion


@reports_user_errors()
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="sweep YAML (see configs/sweep_demo.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the base training config (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the search space and trial count, then exit")
    parser.add_argument("--name", help="sweep name (overrides sweep.name: a new sweep needs a new folder)")
    parser.add_argument("--resume", action="store_true", help="continue this sweep without re-running finished trials")
    parser.add_argument("--verbose", action="store_true",
                        help="also print what Ray, Tune and MLflow log (always in <sweep folder>/sweep.log)")
    args = parser.parse_args(argv)
    with terminal.session(args.verbose):
        try:
            spec = load_sweep(args.config, args.set)
            if args.name:
                spec = replace(spec, name=check_name(args.name))
            if args.dry_run:
                print(spec.describe())
                if spec.search == "grid":
                    for i, point in enumerate(spec.grid()):
                        print(f"  trial {i}: " + ", ".join(f"{k}={v}" for k, v in point.items()))
                return 0
            state, rows, champion = run_sweep(spec, resume=args.resume)
        except SweepInterrupted as err:
            print(str(err), file=sys.stderr)
            return 130
        # here: MLflow takes seconds to import; --dry-run and --help do without it
        from workflows.tracking.tracker import ui_command

        keys = ["trial", "status", *[d.key for d in spec.space], "step", spec.metric]
        print()
        print(" | ".join(keys))
        for row in rows:
            print(" | ".join(f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in keys))
        if champion is None:
            print("no trial finished: no champion registered")
        else:
            print(f"champion: models:/{champion.name}@{CHAMPION} (version {champion.version})")
        print(f"sweep folder: {state.sweep_dir}  (log: {LOG_FILE})")
        print(f"MLflow parent run: {state.parent_run_id}")
        print(f"review it:  {ui_command(state.tracking_uri)}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
