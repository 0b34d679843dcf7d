"""What the training and the pretraining Ray Train workers share around ssl_core.engine's loop: the endless
shard stream, the mean over workers, rank 0's MLflow tracker and progress sender (resumed without logging a
step twice), and the report that hands metrics and a checkpoint to Ray Train in one call.

Used by workflows/runtime/train_worker.py and workflows/runtime/pretrain_worker.py (`python -m workflows.train`,
`python -m workflows.pretrain`).
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist
from torch import Tensor

from ssl_core.param_groups import base_lr
from workflows.console.terminal import ProgressSender
from workflows.runtime.worker_args import WorkerArgs
from workflows.tracking.tracker import Tracker, read_unsent


def cycle(shard: Any, batch_size: int, what: str) -> Iterator[dict[str, Tensor]]:
    """Batches from a dataset shard forever; a new pass re-executes the stream (fresh random clips). `what`
    names the split in the error raised when a whole pass yields no full batch."""
    while True:
        empty = True
        for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=True):
            empty = False
            yield batch
        if empty:
            raise RuntimeError(f"the {what} produced no full batch of {batch_size} clips: fewer readable videos per "
                               "worker than a batch (lower train.batch_size or scaling.num_workers; the unreadable "
                               "ones are listed in the run's MLflow artifact data/skipped_videos.tsv)")


def mean_across_workers(sums: Mapping[str, float], counts: Mapping[str, int]) -> dict[str, float]:
    """Mean of each metric over the log window and over all workers (nan-free values only)."""
    keys = sorted(sums)
    local = torch.tensor([[sums[k], counts[k]] for k in keys], dtype=torch.float64).reshape(-1, 2)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(local)
    return {k: (s / c if c else math.nan) for k, (s, c) in zip(keys, local.tolist(), strict=True)}


def restored_checkpoint(
    load: Callable[[str], dict[str, Any]], handed: str | None = None
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Ray Train's checkpoint of this run (else `handed`, the one the driver chose on --resume: WorkerArgs.resume_from),
    read with `load(directory)`, and the metrics the failed attempt could not deliver to MLflow; (None, []) on a
    fresh start."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        if handed is None:
            return None, []
        return load(handed), read_unsent(handed)
    with checkpoint.as_directory() as ckpt_dir:
        return load(ckpt_dir), read_unsent(ckpt_dir)


@dataclass
class RankZero:
    """Rank 0's side channels: the run's MLflow tracker and the driver's progress bar (None on other ranks), and
    the last step MLflow already holds (a restarted worker group trains those steps again without logging them)."""

    tracker: Tracker | None = None
    progress: ProgressSender | None = None
    logged_until: int = 0

    @classmethod
    def open(cls, args: WorkerArgs, rank: int, start_step: int, unsent: list[dict[str, Any]] | None) -> RankZero:
        """`unsent` is None on a fresh start, the checkpoint's undelivered metrics after a restore."""
        if rank != 0:
            return cls()
        tracker = Tracker(args.tracking_uri, args.mlflow_run_id, buffer_metrics=True)
        progress = ProgressSender(args.progress) if args.progress is not None else None
        return cls(tracker, progress, resume_tracking(tracker, unsent is not None, start_step, unsent or []))

    def after_step(self) -> Callable[[int], None] | None:
        return self.progress.step if self.progress is not None else None

    def log(self, line: str, metrics: Mapping[str, float], step: int, shown: Mapping[str, float] | None = None) -> None:
        """The console line, the progress record (with `shown` on top) and the MLflow metrics of one report."""
        if self.tracker is None:
            return
        # Written to stdout directly: Ray Train's patched print() would echo the line twice.
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        if self.progress is not None:
            self.progress.report({**metrics, **(shown or {})})
        if step > self.logged_until:
            self.tracker.log_metrics(metrics, step=step)

    def report_to_ray(self, metrics: Mapping[str, float], step: int, save: Callable[[str], None] | None) -> None:
        """Hand the report to Ray Train (every worker must, the same number of times) with rank 0's checkpoint
        when `save(directory)` is given; undelivered MLflow metrics travel in the checkpoint."""
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if save is not None:
                save(tmp)
                if self.tracker is not None:
                    self.tracker.write_unsent(tmp)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(dict(metrics), checkpoint=ckpt)
            if ckpt is not None and self.progress is not None:
                self.progress.checkpoint(step)


def data_extras(args: WorkerArgs, scheduler: torch.optim.lr_scheduler.LRScheduler) -> Callable[[], dict[str, float]]:
    """The per-report numbers beside the window's: the learning rate and the videos the streams skipped."""

    def extras() -> dict[str, float]:
        skipped = float(ray.get(args.skip_counter.count.remote()))
        return {"lr": base_lr(scheduler.optimizer), "data/skipped_videos": skipped}

    return extras


def resume_tracking(tracker: Tracker, restored: bool, start_step: int, unsent: list[dict[str, Any]]) -> int:
    """The last step this run's MLflow history holds. After a worker-group restart the steps between the
    checkpoint and the failure are trained again, but MLflow already has them: logging them again would put two
    values at one step. `step` is the last key of each logged batch, so a logged `step` means the whole batch
    arrived. The checkpoint's undelivered metrics are queued again unless the failed attempt delivered them later
    (it sends oldest first, so all at or below the last logged step arrived). A restore is recorded as
    `train/restored_from_step`."""
    logged = tracker.last_logged_step()
    tracker.requeue([m for m in unsent if m["step"] > logged])
    if restored:
        tracker.log_metrics({"train/restored_from_step": float(start_step)}, step=start_step)
    return logged
