"""The driver of one training run on Ray Train with MLflow tracking (`run_training`): validate, prepare the
data, open the MLflow run, build the Ray Data streams, fit workflows.runtime.train_worker, register the model.
The entry point workflows.train, the baseline (workflows.baseline), sweeps and distillation call it.

    python -m workflows.train --config configs/demo.yaml
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssl_core.config import Config, dump_yaml, with_overrides
from ssl_core.data.manifest import Manifest
from ssl_core.run_folder import claim_run_dir, stamped
from workflows.console import terminal
from workflows.runtime.ray_session import init_ray
from workflows.runtime.resume import RunFinished, choose_checkpoint, hand_over
from workflows.runtime.run_state import LOG_FILE, RunState, find_run, preparing
from workflows.runtime.worker_args import WorkerArgs


@dataclass
class TrainOutcome:
    run_dir: Path
    mlflow_run_id: str
    tracking_uri: str
    metrics: dict[str, Any]
    model_uri: str
    model_version: str | None



def new_run_dir(cfg: Config) -> tuple[str, Path]:
    return claim_run_dir(cfg.output.storage, cfg.tracking.run_name or stamped(cfg.algorithm.name))


def logical_cpus(cfg: Config, with_unlabeled: bool) -> int:
    """The CPUs Ray must see (when started in this process) for no Ray Data stream of this run to starve.

    Ray Train 2.60 registers its workers' CPUs (scaling.num_workers x scaling.cpus_per_worker) with Ray Data's
    autoscaling coordinator first; what is left of a node is then split among the Dataset executions running at
    once (the labeled and unlabeled streams, and the test split while rank 0 evaluates) in whole CPUs,
    floor(left / executions). On a 2-core machine Ray sees 2 CPUs: the demo's worker holds 1, and
    floor(1 / 2) = 0 CPUs per stream, less than one decode task (data.decode_cpus). Every stream is then
    starved: Ray Data starts a task only when the Train worker already waits for a batch, and after 60 s logs
    "Cluster resources are not enough to run any task ... The job may hang forever". No decode_cpus /
    cpus_per_worker fixes it on 2 CPUs (any Train share leaves less than 2 whole CPUs for 2 streams), so an
    in-process Ray declares the workers' CPUs plus one whole CPU per execution: 4 for the demo (and stops Ray
    Data's scale-up requests, which would otherwise hand a busy stream the others' share: init_ray). These are
    logical CPUs (scheduling tokens); each stream's budget of 1 CPU lets it keep 1 / data.decode_cpus tasks
    in flight, so decoding overlaps training instead of waiting for it. A cluster's nodes have CPUs to spare;
    a 2-CPU cluster joined with RAY_ADDRESS still starves (the warning then lands in the run's log file)."""
    s = cfg.scaling
    executions = 3 if with_unlabeled else 2  # labeled [+ unlabeled] + eval
    return math.ceil(s.num_workers * s.cpus_per_worker) + executions


def log_data_inputs(tracker: Any, cfg: Config, manifest: Manifest, split_file: Path | None) -> None:
    """The run's data as MLflow dataset inputs (the run's Datasets panel), each with a digest of its rows: the
    manifest (every video: path relative to data.root, class, split) and the labeled split file."""
    import pandas as pd  # here: loaded with MLflow, by a run only

    d = cfg.data
    root = Path(d.root).expanduser().resolve()

    def relative(path: str) -> str:
        return Path(path).relative_to(root).as_posix() if Path(path).is_relative_to(root) else path

    table = pd.DataFrame([(relative(r.path), manifest.classes[r.label], r.split) for r in manifest.records],
                         columns=["path", "label", "split"])
    listing = Path(d.csv_path).expanduser().resolve() if d.csv_path else root / "manifest.csv"
    source = listing if d.layout in ("csv", "kinetics") else root
    tracker.log_dataset(table, source.as_uri(), f"{root.name}-manifest", context="training")
    if split_file is not None:
        split = pd.read_csv(split_file, dtype=str, keep_default_na=False)
        tracker.log_dataset(split, Path(split_file).resolve().as_uri(), f"{root.name}-labeled-split",
                            context="training")


@terminal.with_run_log
def run_training(
    cfg: Config,
    *,
    resume: str | None = None,
    overrides: Sequence[str] = (),
    extra_tags: Mapping[str, str] = {},
    callbacks: Sequence[Any] = (),
    progress: bool = True,
    stop_when_finished: bool = False,
) -> TrainOutcome:
    """Fit one run, or continue run `resume` (its stored config plus `overrides`, e.g. more iterations) from its
    newest checkpoint that loads (workflows.runtime.resume), and return where it lives and its last metrics.
    `extra_tags` go on a new MLflow run (e.g. a parent); `callbacks` are Ray Train callbacks (a Tune sweep passes
    the one that reports to Tune). `progress`: the driver draws the run's progress bar (a sweep's trials do not).
    `stop_when_finished`: a resumed run that already reached train.iterations and whose MLflow run is FINISHED
    raises RunFinished before anything is touched (workflows.train); otherwise it is fitted again (no step left
    to train) and its model logged, which workflows that resume a stage rely on. The run folder's LOG_FILE
    receives the logs of this process and the output of Ray's workers while the run lasts."""
    # here: Ray, torch and MLflow take seconds to load; --help and a config error answer before them
    import ray
    import ray.data
    import torch

    from ssl_core.algorithms import get_algorithm
    from ssl_core.checkpoint import deployed_weights, model_meta
    from ssl_core.data.splits import prepare_data
    from ssl_core.models import build_model
    from workflows.runtime.fit import driver_actors, fit
    from workflows.runtime.streams import build_datasets
    from workflows.runtime.train_worker import train_loop_per_worker
    from workflows.tracking.model_init import prepare_init, tag_registered_version
    from workflows.tracking.tracker import Tracker, check_reachable, resolve_uri, run_tags

    needs_unlabeled = get_algorithm(cfg.algorithm.name).needs_unlabeled
    resume_from = None
    with preparing() as prep:
        if resume is not None:
            run_dir = find_run(Path(cfg.output.storage).resolve(), resume)
            state = RunState.load(run_dir)
            check_reachable(state.tracking_uri)
            cfg = with_overrides(state.config, overrides)
            needs_unlabeled = get_algorithm(cfg.algorithm.name).needs_unlabeled
            # Before the run is marked RUNNING: a run with no loadable checkpoint stays as it was.
            point = choose_checkpoint(run_dir)
            tracker = Tracker(state.tracking_uri, state.mlflow_run_id)
            if stop_when_finished and point is not None and point.step >= cfg.train.iterations \
                    and tracker.status() == "FINISHED":
                raise RunFinished(run_dir, point.step)
            # Also before: data the run can no longer use leaves its record and MLflow run as they were.
            data = prepare_data(cfg, run_dir, needs_unlabeled=needs_unlabeled)
            # Workers use model.init only if the run never saved a checkpoint; a URI resolved at the start is reused.
            init = prepare_init(cfg, run_dir, state.tracking_uri, data.manifest.classes, fresh=False)
            state.config = cfg.to_dict()
            state.save()
            tracker.client.update_run(state.mlflow_run_id, status="RUNNING")
            prep.tracker = tracker
            resume_from = hand_over(run_dir, point) if point is not None else None
        else:
            uri = resolve_uri(cfg.tracking.uri)
            # Before the run folder and the data: an unreachable server leaves nothing behind.
            check_reachable(uri)
            name, run_dir = new_run_dir(cfg)
            prep.run_dir = run_dir
            data = prepare_data(cfg, run_dir, needs_unlabeled=needs_unlabeled)
            # model.init / model.auxiliary_init: MLflow URIs -> files in the run folder, checked before Ray starts.
            init = prepare_init(cfg, run_dir, uri, data.manifest.classes, fresh=True)
            for report in init.reports:
                print(report.line(), flush=True)
            tags = {**run_tags(cfg, run_dir), **init.tags(), **extra_tags}
            tracker = Tracker.start(uri, cfg.tracking.experiment, name, tags)
            prep.tracker = tracker
            tracker.log_params({**cfg.flat(), **init.params(), "data.num_labeled": len(data.labeled),
                                "data.num_unlabeled": len(data.unlabeled), "data.num_test": len(data.test)})
            tracker.log_text(dump_yaml(cfg), "config.yaml")
            if data.split_file is not None:
                tracker.log_artifact(data.split_file)
            log_data_inputs(tracker, cfg, data.manifest, data.split_file)
            state = RunState(name, run_dir, tracker.run_id, uri, cfg.to_dict())
            state.save()

        terminal.log_to(run_dir / LOG_FILE)
        init_ray(min_cpus=logical_cpus(cfg, needs_unlabeled))
        # Per process: a Tune trial actor has its own DataContext.
        ray.data.DataContext.get_current().enable_progress_bars = False
        counter, channel = driver_actors(progress)
        datasets = build_datasets(cfg, data.labeled, data.unlabeled, data.test, counter,
                                  with_unlabeled=needs_unlabeled, targets=data.targets)
        args = WorkerArgs(cfg.to_dict(), list(data.manifest.classes), state.tracking_uri, state.mlflow_run_id,
                          counter, progress=channel, init=init.sources, resume_from=resume_from)
    # The test split is evaluated whole on rank 0; the training streams are split across workers.
    result, final = fit(train_loop_per_worker, args, cfg, name=state.name, run_dir=run_dir, tracker=tracker,
                        counter=counter, channel=channel, datasets=datasets,
                        split=[k for k in datasets if k != "eval"], callbacks=callbacks)
    architecture = final["model_names"]["primary"]
    model = build_model(architecture, num_classes=final["num_classes"])
    model.load_state_dict(deployed_weights(final, "primary"))
    example = torch.zeros(1, 3, cfg.data.num_frames, cfg.augment.crop_size, cfg.augment.crop_size)
    meta = model_meta(cfg, data.manifest.classes)
    model_uri, version = tracker.log_model(model.eval(), cfg.tracking.registered_model, example.numpy(), meta,
                                           architecture=architecture)
    if version is not None and cfg.tracking.registered_model:
        tag_registered_version(tracker.client, state.mlflow_run_id, cfg.tracking.registered_model, version)
    tracker.finish()
    return TrainOutcome(run_dir, state.mlflow_run_id, state.tracking_uri, dict(result.metrics), model_uri, version)
