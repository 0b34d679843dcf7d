"""`pretrain_loop_per_worker`: what each Ray Train worker of workflows.pretrain runs.

  shard of rho-clip rows (no labels) -> per-clip augmentation -> objective (ssl_core.pretrain.step) -> step
  -> every train.log_every: metrics averaged over workers, reported to Ray Train and (rank 0) to MLflow
  -> every pretrain.knn_every and at the end (rank 0): k-NN top-1 / top-5 of frozen backbone features
     (labeled split = memory bank, test split = queries); at the end also the linear probe
  -> every train.checkpoint_every and at the end: a checkpoint (the classifier, projector, momentum encoder,
     queue, optimizer, scheduler, step, RNG) that --resume continues from and model.init reads.
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import Tensor, nn

from ssl_core import allocator
from ssl_core.checkpoint import load_training_state
from ssl_core.config import Config
from ssl_core.loop import build_optimizer
from ssl_core.pretrain.augment import pretrain_views
from ssl_core.pretrain.config import pretrain_from_dict
from ssl_core.pretrain.knn import knn_accuracy, linear_probe, video_features
from ssl_core.pretrain.step import (
    Pretrainer,
    build_net,
    pretrain_optimize,
    restore_pretrain_state,
    save_pretrain_checkpoint,
)
from ssl_core.schedule import build_scheduler
from workflows.console.terminal import ProgressSender
from workflows.runtime.train_worker import cycle, mean_across_workers, resume_tracking
from workflows.tracking.tracker import Tracker, read_unsent


def knn_features(backbone: nn.Module, cfg: Config, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(bank features, bank labels, query features, query labels) from the whole "knn" dataset (rank 0)."""
    was_training = backbone.training
    backbone.eval()
    feats: dict[int, list[Tensor]] = {0: [], 1: []}
    labels: dict[int, list[Tensor]] = {0: [], 1: []}
    for batch in ray.train.get_dataset_shard("knn").iter_torch_batches(batch_size=cfg.train.batch_size):
        f = video_features(backbone, batch["clips"], cfg.augment, device)
        for bank in (0, 1):
            at = (batch["bank"] == bank).cpu()
            feats[bank].append(f[at])
            labels[bank].append(batch["label"].cpu()[at])
    backbone.train(was_training)
    return torch.cat(feats[1]), torch.cat(labels[1]), torch.cat(feats[0]), torch.cat(labels[0])


def pretrain_line(metrics: Mapping[str, float], iterations: int) -> str:
    """`step 40/400 | loss 5.123 | instance_acc 0.41 | knn/top1 0.250 | clips/s 30.1`, for the run's log."""
    shown = [f"step {int(metrics['step'])}/{iterations}"]
    for key in ("loss/total", "loss/pretext", "pretrain/instance_acc", "pretrain/embedding_std", "knn/top1",
                "probe/top1"):
        value = metrics.get(key)
        if value is not None and not math.isnan(value):
            shown.append(f"{key.removeprefix('loss/').removeprefix('pretrain/')} {value:.3f}")
    shown.append(f"clips/s {metrics['perf/clips_per_s']:.1f}")
    return " | ".join(shown)


def pretrain_loop_per_worker(loop_config: dict[str, Any]) -> None:
    setup = pretrain_from_dict(loop_config["config"])
    cfg, p, t = setup.base, setup.pretrain, setup.base.train
    classes: list[str] = loop_config["classes"]
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(cfg.scaling.torch_threads)
    allocator.configure(cfg.scaling)
    device = ray.train.torch.get_device()
    checkpoint = ray.train.get_checkpoint()
    # The same seed on every worker: identical initial weights, momentum encoder and queue (DDP also broadcasts
    # rank 0's weights, but the momentum encoder is copied before that and is not wrapped).
    torch.manual_seed(t.seed)
    net, _ = build_net(setup, classes, loop_config.get("init"), init=checkpoint is None)
    net = net.to(device)
    optimizer = build_optimizer(cfg, {"net": net})
    scheduler = build_scheduler(optimizer, warmup=t.warmup_iters, total=t.iterations)
    trainer = Pretrainer(net, p, iterations=t.iterations, queue_size=loop_config["queue_size"], seed=t.seed)
    start_step = 0
    unsent: list[dict[str, Any]] = []
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = load_training_state(ckpt_dir)
            unsent = read_unsent(ckpt_dir)
        start_step = restore_pretrain_state(state, trainer=trainer, optimizer=optimizer, scheduler=scheduler)
    trainer.net = ray.train.torch.prepare_model(net)
    # Distinct augmentation and BN-shuffle draws per worker, and after a restore.
    torch.manual_seed(t.seed * 1000 + rank + start_step)

    tracker = None
    progress = None
    if rank == 0:
        tracker = Tracker(loop_config["tracking_uri"], loop_config["mlflow_run_id"], buffer_metrics=True)
        if loop_config.get("progress") is not None:
            progress = ProgressSender(loop_config["progress"])
    logged_until = resume_tracking(tracker, checkpoint is not None, start_step, unsent)
    def knn_now() -> tuple[dict[str, float], tuple[Tensor, Tensor, Tensor, Tensor]]:
        features = knn_features(trainer.core.backbone, cfg, device)
        return knn_accuracy(*features, len(classes), k=p.knn_k, temperature=p.knn_temperature), features

    if rank == 0 and start_step == 0 and p.knn_every:
        # The curve's first point: the features before any step (random, or model.init's), what pretraining must beat.
        knn, _ = knn_now()
        tracker.log_metrics(knn, step=0)
        if progress is not None:
            progress.report({**knn, "step": 0, "eval/top1_knn": knn["knn/top1"], "eval/top5_knn": knn["knn/top5"]})
    counter = loop_config["skip_counter"]
    train_it = cycle(ray.train.get_dataset_shard("train"), t.batch_size)
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    window_start, window_clips = time.perf_counter(), 0
    for step in range(start_step, t.iterations):
        batch = next(train_it)
        views = (batch["views"].to(device) if "views" in batch
                 else pretrain_views(batch["clips"].to(device), cfg.augment, p))
        pretext = batch["pretext"] if p.pretext != "none" else None
        step_metrics = pretrain_optimize(trainer, optimizer, scheduler, views, pretext, grad_clip=t.grad_clip)
        window_clips += views.shape[0] * views.shape[1]
        for key, value in step_metrics.items():
            sums[key] += 0.0 if math.isnan(value) else value
            counts[key] += 0 if math.isnan(value) else 1

        done = step + 1
        if progress is not None:
            progress.step(done)
        last = done == t.iterations
        knn_due = bool(p.knn_every and done % p.knn_every == 0) or last  # the same on every worker
        if done % t.log_every and done % t.checkpoint_every and not knn_due:
            continue
        metrics = mean_across_workers(sums, counts)
        sums.clear()
        counts.clear()
        elapsed = time.perf_counter() - window_start
        metrics["perf/clips_per_s"] = window_clips * ctx.get_world_size() / max(elapsed, 1e-9)
        metrics["perf/it_per_s"] = metrics["perf/clips_per_s"] / (t.batch_size * p.rho * ctx.get_world_size())
        metrics["lr"] = scheduler.get_last_lr()[0]
        metrics["data/skipped_videos"] = float(ray.get(counter.count.remote()))
        shown: dict[str, float] = {}
        if rank == 0 and knn_due:
            knn, (bank, bank_y, queries, query_y) = knn_now()
            metrics.update(knn)
            shown = {"eval/top1_knn": knn["knn/top1"], "eval/top5_knn": knn["knn/top5"]}
            if last and p.probe_steps:
                probe = linear_probe(bank, bank_y, queries, query_y, len(classes), steps=p.probe_steps,
                                     weight_decay=p.probe_weight_decay)
                metrics.update(probe)
                shown.update({"eval/top1_probe": probe["probe/top1"], "eval/top5_probe": probe["probe/top5"]})
        metrics["step"] = done
        if tracker is not None:
            sys.stdout.write(pretrain_line(metrics, t.iterations) + "\n")  # Ray's patched print() would echo twice
            sys.stdout.flush()
            if progress is not None:
                progress.report({**metrics, **shown})
            if done > logged_until:
                tracker.log_metrics(metrics, step=done)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if (done % t.checkpoint_every == 0 or last) and rank == 0:
                save_pretrain_checkpoint(tmp, setup=setup, trainer=trainer, optimizer=optimizer, scheduler=scheduler,
                                         step=done, classes=classes)
                if tracker is not None:
                    tracker.write_unsent(tmp)
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
            if ckpt is not None and progress is not None:
                progress.checkpoint(done)
        window_start, window_clips = time.perf_counter(), 0
