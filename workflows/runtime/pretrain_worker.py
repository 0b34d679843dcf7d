"""`pretrain_loop_per_worker`: what each Ray Train worker of workflows.pretrain runs, the Ray adapter of
ssl_core.engine's step loop with the pretraining step and monitors:

  shard of rho-clip rows (no labels) -> per-clip augmentation -> objective (ssl_core.pretrain.step) -> step
     [+ a shard of labeled rows -> the classifier beside the objective, when pretrain.labeled_weight > 0]
  -> every train.log_every: metrics averaged over workers, reported to Ray Train and (rank 0) to MLflow
  -> every pretrain.knn_every and at the end (rank 0): k-NN top-1 / top-5 of frozen backbone features
     (labeled split = memory bank, test split = queries); at the end also the linear probe
  -> every train.checkpoint_every and at the end: a checkpoint (the classifier, projector, momentum encoder,
     queue, optimizer, scheduler, step, RNG) that --resume continues from and model.init reads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import Tensor, nn

from ssl_core import allocator
from ssl_core.checkpoint import load_training_state
from ssl_core.config import Config
from ssl_core.engine import Hooks, Report, Schedule, run
from ssl_core.pretrain.augment import pretrain_views
from ssl_core.pretrain.config import PretrainSetup, pretrain_from_dict
from ssl_core.pretrain.knn import knn_accuracy, linear_probe, video_features
from ssl_core.pretrain.step import (
    Pretrainer,
    build_net,
    init_objective_state,
    pretrain_optimize,
    restore_pretrain_state,
    save_pretrain_checkpoint,
)
from ssl_core.schedule import build_scheduler
from ssl_core.train_step import build_optimizer
from workflows.runtime.worker_args import WorkerArgs
from workflows.runtime.worker_shared import RankZero, cycle, data_extras, mean_across_workers, restored_checkpoint


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
    """`step 40/400 | total 5.123 | instance_acc 0.410 | knn/top1 0.250 | clips/s 30.1` (videomae: mask_ratio in
    place of instance_acc), for the run's log."""
    shown = [f"step {int(metrics['step'])}/{iterations}"]
    for key in ("loss/total", "loss/pretext", "pretrain/instance_acc", "pretrain/embedding_std",
                "pretrain/mask_ratio", "knn/top1", "probe/top1"):
        value = metrics.get(key)
        if value is not None and not math.isnan(value):
            shown.append(f"{key.removeprefix('loss/').removeprefix('pretrain/')} {value:.3f}")
    shown.append(f"clips/s {metrics['perf/clips_per_s']:.1f}")
    return " | ".join(shown)


def pretrain_loop_per_worker(loop_config: dict[str, Any]) -> None:
    args = WorkerArgs.of(loop_config)
    setup = pretrain_from_dict(args.config)
    cfg, p, t = setup.base, setup.pretrain, setup.base.train
    torch.set_num_threads(cfg.scaling.torch_threads)
    allocator.configure(cfg.scaling)
    # The same seed on every worker: identical initial weights, momentum encoder and queue (DDP also broadcasts
    # rank 0's weights, but the momentum encoder is copied before that and is not wrapped).
    run(t.seed, lambda: build_pretraining(args, setup),
        Schedule(t.iterations, t.log_every, p.knn_every, t.checkpoint_every))


def build_pretraining(args: WorkerArgs, setup: PretrainSetup) -> tuple[Hooks, int]:
    """This worker's network, objective and stream, restored from Ray Train's checkpoint when there is one, and
    the hooks that step them, run the k-NN monitor and the probe (rank 0), and report to Ray Train and MLflow."""
    cfg, p, t = setup.base, setup.pretrain, setup.base.train
    classes = args.classes
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    state, unsent = restored_checkpoint(load_training_state, args.resume_from)
    net, _ = build_net(setup, classes, args.init, init=state is None)
    net = net.to(device)
    optimizer = build_optimizer(cfg, {"net": net})
    scheduler = build_scheduler(optimizer, warmup=t.warmup_iters, total=t.iterations)
    trainer = Pretrainer(net, p, iterations=t.iterations, queue_size=args.queue_size, seed=t.seed)
    start_step = 0
    if state is not None:
        start_step = restore_pretrain_state(state, trainer=trainer, optimizer=optimizer, scheduler=scheduler)
    elif (objective_state := init_objective_state(setup, args.init)) is not None:
        taken = trainer.continue_objective(objective_state)
        if taken and rank == 0:
            print(f"objective continued from model.init: {', '.join(taken)}", flush=True)
    trainer.net = ray.train.torch.prepare_model(net)
    # Distinct augmentation and BN-shuffle draws per worker, and after a restore.
    torch.manual_seed(t.seed * 1000 + rank + start_step)
    rank_zero = RankZero.open(args, rank, start_step, unsent if state is not None else None)
    tracker, progress = rank_zero.tracker, rank_zero.progress

    def knn_now() -> tuple[dict[str, float], tuple[Tensor, Tensor, Tensor, Tensor]]:
        features = knn_features(trainer.core.backbone, cfg, device)
        return knn_accuracy(*features, len(classes), k=p.knn_k, temperature=p.knn_temperature), features

    if tracker is not None and start_step == 0 and p.knn_every:
        # The curve's first point: the features before any step (random, or model.init's), what pretraining must beat.
        knn, _ = knn_now()
        tracker.log_metrics(knn, step=0)
        if progress is not None:
            progress.report({**knn, "step": 0, **shown_as_eval(knn)})
    train_it = cycle(ray.train.get_dataset_shard("train"), t.batch_size, "train split") if p.objective_weight > 0 \
        else None
    labeled_it = (cycle(ray.train.get_dataset_shard("labeled"), p.labeled_batch, "labeled split")
                  if p.labeled_weight > 0 else None)
    pseudo_it = (cycle(ray.train.get_dataset_shard("pseudo"), p.pseudo_batch, "pseudo-labeled set")
                 if p.labeled_weight > 0 and cfg.data.pseudo_labels else None)

    def views_of(batch: Mapping[str, Tensor]) -> Tensor:
        return (batch["views"].to(device) if "views" in batch
                else pretrain_views(batch["clips"].to(device), cfg.augment, p))

    def step(_: int) -> tuple[Mapping[str, Tensor], int]:
        views, pretext, labeled, clips = None, None, None, 0
        if train_it is not None:
            batch = next(train_it)
            views = views_of(batch)
            pretext = batch["pretext"] if p.pretext != "none" else None
            clips += views.shape[0] * views.shape[1]
        if labeled_it is not None:
            labeled_batch = next(labeled_it)
            labeled = (views_of(labeled_batch), labeled_batch["label"])
            if pseudo_it is not None:
                pseudo_batch = next(pseudo_it)
                labeled = (torch.cat([labeled[0], views_of(pseudo_batch)]),
                           torch.cat([labeled[1], pseudo_batch["label"]]))
            clips += labeled[0].shape[0] * labeled[0].shape[1]
        metrics = pretrain_optimize(trainer, optimizer, scheduler, views, pretext, grad_clip=t.grad_clip,
                                    labeled=labeled)
        return metrics, clips

    def monitor(done: int, last: bool) -> dict[str, float]:
        if rank != 0:
            return {}
        metrics, (bank, bank_y, queries, query_y) = knn_now()
        if last and p.probe_steps:
            metrics.update(linear_probe(bank, bank_y, queries, query_y, len(classes), steps=p.probe_steps,
                                        weight_decay=p.probe_weight_decay))
        return metrics

    def publish(report: Report) -> None:
        metrics = report.metrics
        rank_zero.log(pretrain_line(metrics, t.iterations), metrics, report.step, shown_as_eval(metrics))

        def save(directory: str) -> None:
            save_pretrain_checkpoint(directory, setup=setup, trainer=trainer, optimizer=optimizer,
                                     scheduler=scheduler, step=report.step, classes=classes)

        rank_zero.report_to_ray(metrics, report.step, save if report.due.checkpoint and rank == 0 else None)

    hooks = Hooks(step=step, report=publish, evaluate=monitor, extras=data_extras(args, scheduler),
                  reduce=mean_across_workers, after_step=rank_zero.after_step(), workers=ctx.get_world_size(),
                  it_per_s=True)
    return hooks, start_step


def shown_as_eval(metrics: Mapping[str, float]) -> dict[str, float]:
    """The k-NN and probe accuracies under the eval/ names the driver's progress lines show."""
    shown = {}
    for source in ("knn", "probe"):
        for k in ("top1", "top5"):
            if f"{source}/{k}" in metrics:
                shown[f"eval/{k}_{source}"] = metrics[f"{source}/{k}"]
    return shown
