"""Fit a Ray Train loop into a vidssl run folder and read back its final checkpoint: the part training
(workflows/train.py) and pretraining (workflows/pretrain.py) share once their MLflow run is open.

    python -m workflows.train --config configs/demo.yaml       # calls fit() with workflows.runtime.train_worker
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ssl_core.config import Config
from ssl_core.user_errors import first_skipped
from workflows.console import terminal
from workflows.runtime.worker_args import WorkerArgs

log = logging.getLogger("vidssl.fit")


def driver_actors(progress: bool) -> tuple[Any, Any]:
    """The run's skip counter and, when the driver draws the progress bar, its progress channel (else None):
    both on the driver's node, so a lost worker node does not take them along."""
    # here: Ray takes seconds to load; the entry points import this module only once a run starts, and not then
    from workflows.runtime.ray_session import on_driver_node
    from workflows.runtime.streams import SkipCounter

    counter = SkipCounter.options(**on_driver_node()).remote()
    return counter, terminal.progress_channel(**on_driver_node()) if progress else None


def fit(
    loop_per_worker: Callable[[dict[str, Any]], None],
    args: WorkerArgs,
    cfg: Config,
    *,
    name: str,
    run_dir: Path,
    tracker: Any,  # workflows.tracking.tracker.Tracker: the run's MLflow run
    counter: Any,  # workflows.runtime.streams.SkipCounter actor
    channel: Any,  # terminal.progress_channel() or None
    datasets: Mapping[str, Any],
    split: Sequence[str],
    callbacks: Sequence[Any] = (),
) -> tuple[Any, dict[str, Any]]:
    """TorchTrainer over `datasets` (`split`: the ones divided among workers; the others go whole to each) with
    the run's restarts, checkpoints and quiet logging; the MLflow run is marked FAILED if fitting raises. Then
    the skipped videos are logged and the final checkpoint's unsent metrics uploaded. Returns the Ray Train
    result and the final checkpoint's training state (ssl_core.checkpoint.load_training_state)."""
    # here: as in driver_actors
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from ssl_core.checkpoint import load_training_state
    from workflows.tracking.tracker import upload_unsent

    s = cfg.scaling
    trainer = TorchTrainer(
        loop_per_worker,
        train_loop_config=args.loop_config(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker={"CPU": s.cpus_per_worker},
            placement_strategy=s.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(run_dir.parent),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
            # A dead worker restarts the whole group from the latest checkpoint, into the same MLflow run.
            failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
            # Ray Train's INFO log repeats every report's metrics; the rank-0 worker prints one line instead.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            callbacks=list(callbacks),
        ),
        datasets=dict(datasets),
        dataset_config=ray.train.DataConfig(datasets_to_split=list(split)),
    )
    try:
        with terminal.TrainingProgress(channel, cfg.train.iterations, name):
            result = trainer.fit()
    except BaseException:
        tracker.finish("FAILED")
        raise

    skipped = ray.get(counter.report.remote())
    if skipped:
        tracker.log_text("".join(f"{p}\t{why}\n" for p, why in sorted(skipped.items())), "data/skipped_videos.tsv")
        log.warning("skipped %d unreadable videos (listed in MLflow artifact data/skipped_videos.tsv): %s",
                    len(skipped), first_skipped(skipped))
    with result.checkpoint.as_directory() as ckpt_dir:
        final = load_training_state(ckpt_dir)
        # Metrics the rank-0 worker could not deliver while the server was away (see Tracker.write_unsent).
        upload_unsent(ckpt_dir)
    return result, final
