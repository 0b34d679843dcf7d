"""Self-supervised pretraining of a backbone on every train video, on Ray Data + Ray Train, tracked in MLflow.

    python -m workflows.pretrain --config configs/pretrain_demo.yaml [--set pretrain.rho=4] [--smoke-test]
    python -m workflows.pretrain --config configs/pretrain_demo.yaml --resume latest   # continue the newest one
    python -m workflows.train --config configs/demo.yaml --set model.init=<the run folder it prints>
    python -m workflows.pretrain --config configs/pretrain_demo.yaml --set pretrain.labeled_weight=1   # + labels

The objective (pretrain.objective: rho-MoCo or SimCLR, optional speed / arrow-of-time pretext, or VideoMAE's
masked reconstruction for a ViT: configs/pretrain_videomae_demo.yaml) sees no label: the train stream carries
none. With pretrain.labeled_weight > 0 a second stream of the labeled split's videos and labels (plus, with
data.pseudo_labels, a pseudo-labeled set's videos under their teacher's labels) feeds a classifier beside it;
pretrain.objective_weight=0 leaves that classifier alone and drops the train stream (the stage workflows.self_train
runs, configs/selftrain_appearance.yaml). Labels feed the monitors too: k-NN top-1 of frozen features every
pretrain.knn_every steps (`knn/top1`, memory bank = the labeled split, queries = the test split) and a linear
probe at the end (`probe/top1`). At the end the backbone (the full model.primary classifier, its head untrained)
is logged and registered under tracking.registered_model with tags vidssl.stage=pretrain, vidssl.objective and
vidssl.run_id; `knn/top1_curve.png` is logged beside it. The run folder holds Ray Train checkpoints in
ssl_core.checkpoint format: `model.init=<run folder>` (or the registered model's URI) starts a training run
from the backbone, its classifier fresh.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssl_core.config import ConfigError
from ssl_core.pretrain.config import PretrainSetup, load_pretrain_config, pretrain_with_overrides
from ssl_core.run_folder import claim_run_dir, stamped
from ssl_core.user_errors import reports_user_errors
from workflows.console import terminal
from workflows.runtime.ray_session import init_ray
from workflows.runtime.resume import RunFinished, choose_checkpoint, hand_over
from workflows.runtime.run_state import LOG_FILE, RUN_FILE, RunState, preparing
from workflows.runtime.worker_args import WorkerArgs

SMOKE_TEST = ("train.iterations=4", "train.log_every=2", "pretrain.knn_every=4", "train.checkpoint_every=4")
STAGE = "pretrain"


@dataclass
class PretrainOutcome:
    run_dir: Path
    mlflow_run_id: str
    tracking_uri: str
    metrics: dict[str, Any]
    model_uri: str
    model_version: str | None
    num_classes: int


def is_pretrain_run(run_dir: Path) -> bool:
    try:
        return "pretrain" in json.loads((run_dir / RUN_FILE).read_text()).get("config", {})
    except (OSError, ValueError):
        return False


def find_pretrain_run(storage: Path, which: str) -> Path:
    """`latest` -> the most recently started pretraining run under storage (training runs may share it);
    otherwise a run name."""
    if which != "latest":
        run_dir = storage / which
        if (run_dir / RUN_FILE).exists():
            RunState.load(run_dir)  # a damaged record: its own error (ConfigError naming it), not "no run named"
        if not is_pretrain_run(run_dir):
            raise ConfigError(f"--resume: no pretraining run named {which!r} under {storage}")
        return run_dir
    for record in sorted(storage.glob(f"*/{RUN_FILE}"), key=lambda p: p.stat().st_mtime, reverse=True):
        # Newest first; a damaged record newer than the pretraining run found may be the one meant: its error.
        if "pretrain" in RunState.load(record.parent).config:
            return record.parent
    raise ConfigError(f"--resume latest: no pretraining run to resume under {storage}")


def new_run_dir(setup: PretrainSetup) -> tuple[str, Path]:
    base = setup.base
    return claim_run_dir(base.output.storage, base.tracking.run_name or stamped(f"pretrain-{setup.pretrain.objective}"))


def logical_cpus(setup: PretrainSetup) -> int:
    """The CPUs an in-process Ray declares: the workers' plus one per Dataset execution running at once (the
    train stream, and the k-NN set while rank 0 evaluates); see workflows.runtime.training.logical_cpus for why."""
    s = setup.base.scaling
    return math.ceil(s.num_workers * s.cpus_per_worker) + 2


def _objective_note(setup: PretrainSetup, num_train: int) -> str:
    if setup.pretrain.objective == "videomae":
        return f"tube mask ratio {setup.pretrain.mask_ratio}"
    if setup.pretrain.objective != "rho_moco":
        return ""
    size = setup.queue_size(num_train)
    auto = " (automatic: min(4096, half the train videos))" if setup.pretrain.queue_size is None else ""
    return f"queue of {size} negative keys{auto}"


@terminal.with_run_log
def run_pretraining(
    setup: PretrainSetup,
    *,
    resume: str | None = None,
    overrides: Sequence[str] = (),
    extra_tags: Mapping[str, str] = {},
    progress: bool = True,
    stop_when_finished: bool = False,
) -> PretrainOutcome:
    """Pretrain one run, or continue run `resume` (its stored config plus `overrides`) from its newest checkpoint
    that loads, register the backbone, and return where it lives and its last metrics. `stop_when_finished`: as
    workflows.runtime.training.run_training's."""
    # here: Ray, torch and MLflow take seconds to load; --help and a config error answer before them
    import ray
    import ray.data
    import torch

    from ssl_core.checkpoint import model_from_state
    from ssl_core.pretrain.records import objective_records, prepare_pretrain_data, pseudo_records
    from workflows.runtime.fit import driver_actors, fit
    from workflows.runtime.pretrain_streams import build_pretrain_datasets
    from workflows.runtime.pretrain_worker import pretrain_loop_per_worker
    from workflows.runtime.training import log_data_inputs
    from workflows.tracking.model_init import resolve_sources, tag_registered_version
    from workflows.tracking.plots import metric_curve_figure
    from workflows.tracking.tracker import Tracker, check_reachable, resolve_uri

    resume_from = None
    with preparing() as prep:
        if resume is not None:
            run_dir = find_pretrain_run(Path(setup.base.output.storage).resolve(), resume)
            state = RunState.load(run_dir)
            check_reachable(state.tracking_uri)
            setup = pretrain_with_overrides(state.config, overrides)
            # Before the run is marked RUNNING: a run with no loadable checkpoint stays as it was.
            point = choose_checkpoint(run_dir)
            tracker = Tracker(state.tracking_uri, state.mlflow_run_id)
            if stop_when_finished and point is not None and point.step >= setup.base.train.iterations \
                    and tracker.status() == "FINISHED":
                raise RunFinished(run_dir, point.step)
            # Also before: data the run can no longer use leaves its record and MLflow run as they were.
            data = prepare_pretrain_data(setup.base, run_dir)
            sources, _ = resolve_sources(setup.base, run_dir, state.tracking_uri)
            state.config = setup.to_dict()
            state.save()
            tracker.client.update_run(state.mlflow_run_id, status="RUNNING")
            prep.tracker = tracker
            resume_from = hand_over(run_dir, point) if point is not None else None
        else:
            uri = resolve_uri(setup.base.tracking.uri)
            check_reachable(uri)  # before the run folder and the data: an unreachable server leaves nothing behind
            name, run_dir = new_run_dir(setup)
            prep.run_dir = run_dir
            data = prepare_pretrain_data(setup.base, run_dir)
            tags = {"vidssl.stage": STAGE, "vidssl.objective": setup.pretrain.objective,
                    "vidssl.primary": setup.base.model.primary, "vidssl.run_dir": str(run_dir), **extra_tags}
            params: dict[str, Any] = {}
            # model.init: the backbone may itself start from weights (e.g. Kinetics-400); checked before Ray starts.
            sources, lineage = resolve_sources(setup.base, run_dir, uri)
            if setup.base.model.init:
                from ssl_core.pretrain.step import build_net  # here: torch and the models, for a model.init run only

                _, reports = build_net(setup, data.manifest.classes, sources)
                for report in reports:
                    print(report.line(), flush=True)
                    tags[f"init.{report.name}"] = report.line()
                    params.update(report.params())
                tags.update(lineage)
            tracker = Tracker.start(uri, setup.base.tracking.experiment, name, tags)
            prep.tracker = tracker
            num_train = len(objective_records(data))
            tracker.log_params({**setup.params(), **params, "pretrain.queue_size_used": setup.queue_size(num_train),
                                "data.num_train": num_train, "data.num_labeled": len(data.labeled),
                                "data.num_test": len(data.test)})
            tracker.log_text(yaml_text(setup), "config.yaml")
            if data.split_file is not None:
                tracker.log_artifact(data.split_file)
            log_data_inputs(tracker, setup.base, data.manifest, data.split_file)
            state = RunState(name, run_dir, tracker.run_id, uri, setup.to_dict())
            state.save()

        terminal.log_to(run_dir / LOG_FILE)
        cfg = setup.base
        train_records = objective_records(data)  # every train video; the stream drops their labels
        note = _objective_note(setup, len(train_records))
        print(f"pretraining {cfg.model.primary} with {setup.pretrain.objective} (rho {setup.pretrain.rho}) on "
              f"{len(train_records)} train videos" + (f", {note}" if note else ""), flush=True)
        init_ray(min_cpus=logical_cpus(setup))
        ray.data.DataContext.get_current().enable_progress_bars = False
        counter, channel = driver_actors(progress)
        datasets = build_pretrain_datasets(setup, train_records, data.labeled, pseudo_records(data), data.test,
                                           counter)
        args = WorkerArgs(setup.to_dict(), list(data.manifest.classes), state.tracking_uri, state.mlflow_run_id,
                          counter, progress=channel, init=sources, queue_size=setup.queue_size(len(train_records)),
                          resume_from=resume_from)
    # The k-NN set goes whole to rank 0.
    result, final = fit(pretrain_loop_per_worker, args, cfg, name=state.name, run_dir=run_dir, tracker=tracker,
                        counter=counter, channel=channel, datasets=datasets,
                        split=[name for name in ("train", "labeled", "pseudo") if name in datasets])
    # The full classifier (its head untrained): what model.init, evaluate and predict read.
    model = model_from_state(final, "primary", "the final checkpoint")
    example = torch.zeros(1, 3, cfg.data.num_frames, cfg.augment.crop_size, cfg.augment.crop_size)
    model_uri, version = tracker.log_model(model.eval(), cfg.tracking.registered_model, example.numpy(),
                                           dict(final["meta"]), architecture=final["model_names"]["primary"])
    if version is not None and cfg.tracking.registered_model:
        name = cfg.tracking.registered_model
        for key, value in {"vidssl.stage": STAGE, "vidssl.objective": setup.pretrain.objective,
                           "vidssl.run_id": state.mlflow_run_id}.items():
            tracker.client.set_model_version_tag(name, version, key, value)
        tag_registered_version(tracker.client, state.mlflow_run_id, name, version)
    history = tracker.metric_history("knn/top1")
    if history:
        chance = 1 / len(data.manifest.classes)
        tracker.log_figure(metric_curve_figure(history, metric="k-NN top-1", chance=chance,
                                               title=f"{setup.pretrain.objective}: k-NN top-1 of frozen features"),
                           "knn/top1_curve.png")
    tracker.finish()
    metrics = dict(result.metrics)
    return PretrainOutcome(run_dir, state.mlflow_run_id, state.tracking_uri, metrics, model_uri, version,
                           len(data.manifest.classes))


def yaml_text(setup: PretrainSetup) -> str:
    import yaml  # here: with the other deferred imports of a run, not at --help

    return yaml.safe_dump(setup.to_dict(), sort_keys=False)


def summary(outcome: PretrainOutcome, setup: PretrainSetup) -> str:
    m = outcome.metrics

    def pct(key: str) -> str:
        value = m.get(key)
        return "n/a" if value is None or value != value else f"{100 * value:.1f} %"

    return (f"{setup.pretrain.objective} pretraining of {setup.base.model.primary} on {setup.base.data.root}: step "
            f"{m.get('step')}\n"
            f"k-NN top-1 {pct('knn/top1')} (top-5 {pct('knn/top5')}), linear probe top-1 {pct('probe/top1')}; "
            f"chance {100 / outcome.num_classes:.1f} %")


@reports_user_errors()
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="pretraining YAML file (e.g. configs/pretrain_demo.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set pretrain.rho=4 (repeatable)")
    parser.add_argument("--resume", metavar="RUN|latest", help="continue a pretraining run from its latest checkpoint")
    parser.add_argument("--smoke-test", action="store_true", help="4 iterations, to check the wiring")
    parser.add_argument("--verbose", action="store_true",
                        help=f"also print what Ray, Ray Data, Ray Train and MLflow log (always in <run>/{LOG_FILE})")
    args = parser.parse_args(argv)
    with terminal.session(args.verbose):
        try:
            setup = load_pretrain_config(args.config, [*args.set, *(SMOKE_TEST if args.smoke_test else ())])
            outcome = run_pretraining(setup, resume=args.resume, overrides=args.set, stop_when_finished=True)
        except RunFinished as done:
            print(done, flush=True)
            return 0
        # here: MLflow's client takes seconds to load; a config error answers before it
        from ssl_core.pretrain.config import next_command, pretrain_from_dict
        from workflows.tracking.tracker import ui_command

        stored = pretrain_from_dict(RunState.load(outcome.run_dir).config)
        print()
        print(summary(outcome, stored))
        print(f"run folder: {outcome.run_dir}  (log: {LOG_FILE})")
        print(f"MLflow run: {outcome.mlflow_run_id}  model: {outcome.model_uri}  version: {outcome.model_version}")
        print(f"next:       {next_command(stored, outcome.run_dir)}")
        print(f"review it:  {ui_command(outcome.tracking_uri)}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
