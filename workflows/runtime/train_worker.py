"""`train_loop_per_worker`: what each Ray Train worker runs, the Ray adapter of ssl_core.engine's step loop.
It only wires things together:

  shard of decoded uint8 clips -> augment (weak / strong) -> ssl_step -> backward, clip, step, LR
  -> every log_every: metrics averaged over workers, reported to Ray Train and (rank 0) to MLflow
  -> every eval_every: multi-clip evaluation of every model the algorithm has
  -> every checkpoint_every: a checkpoint directory holding everything needed to continue.

Started by workflows/train.py (`python -m workflows.train --config configs/demo.yaml`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import Tensor, nn

from ssl_core import allocator
from ssl_core.algorithms import get_algorithm
from ssl_core.checkpoint import (
    load_training_state,
    model_meta,
    restore_training_state,
    save_training_state,
)
from ssl_core.config import Config, from_dict
from ssl_core.engine import Hooks, Report, Schedule, run
from ssl_core.evaluate import EvalCounts, PreciseBN, video_probs
from ssl_core.schedule import build_scheduler
from ssl_core.train_step import (
    build_models,
    build_optimizer,
    freeze,
    held_backbones,
    init_models,
    input_memory_format,
    model_names,
    optimize,
    place_models,
    stream_batches,
)
from ssl_core.unwrap import unwrap
from workflows.runtime.worker_args import WorkerArgs
from workflows.runtime.worker_shared import RankZero, cycle, data_extras, mean_across_workers, restored_checkpoint
from workflows.tracking.plots import confusion_figure
from workflows.tracking.tracker import Tracker


def evaluate(
    models: Mapping[str, nn.Module], cfg: Config, num_classes: int, device: torch.device
) -> dict[str, EvalCounts]:
    """Counts for every model over the whole test split (rank 0 only: an equal split across workers
    would drop videos to even out the shards)."""
    counts = {role: EvalCounts.zeros(num_classes) for role in models}
    was_training = {role: m.training for role, m in models.items()}  # a frozen teacher stays in eval mode
    for m in models.values():
        m.eval()
    for batch in ray.train.get_dataset_shard("eval").iter_torch_batches(batch_size=cfg.train.batch_size):
        for role, m in models.items():
            counts[role].add(video_probs(unwrap(m), batch["clips"], cfg.augment, device), batch["label"])
    for role, m in models.items():
        m.train(was_training[role])
    return counts


def load_teacher(spec: str, tracking_uri: str, classes: list[str], *, trust_pickle: bool = False) -> nn.Module:
    """A frozen teacher from an MLflow model URI (models:/name@alias, runs:/...), a checkpoint directory or a
    run folder; it must know the run's classes in the run's order, or its pseudo-labels would name others.
    `trust_pickle` (model.trust_pickle): also unpickle a model an older vidssl logged in MLflow's pytorch format."""
    # here: loading MLflow models is heavy, and only a run with a frozen teacher needs it
    from workflows.runtime.inference import load_for_inference

    loaded = load_for_inference(spec, tracking_uri, trust_pickle=trust_pickle)
    if loaded.classes != classes:
        raise ValueError(f"model.teacher {spec}: its classes {loaded.classes} differ from this run's {classes}")
    return loaded.model


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    args = WorkerArgs.of(loop_config)
    cfg = from_dict(args.config)
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(cfg.scaling.torch_threads)
    allocator.configure(cfg.scaling)
    t = cfg.train
    run(t.seed * 1000 + rank, lambda: build_training(args, cfg, rank),
        Schedule(t.iterations, t.log_every, t.eval_every, t.checkpoint_every))


def build_training(args: WorkerArgs, cfg: Config, rank: int) -> tuple[Hooks, int]:
    """This worker's models, optimizer and streams, restored from Ray Train's checkpoint when there is one,
    and the hooks that step them, evaluate (rank 0), and report to Ray Train and (rank 0) MLflow."""
    classes = args.classes
    num_classes = len(classes)
    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    names = model_names(cfg)
    models = place_models(build_models(cfg, num_classes), cfg, device)
    optimizer = build_optimizer(cfg, models)
    scheduler = build_scheduler(optimizer, warmup=cfg.train.warmup_iters, total=cfg.train.iterations)
    algorithm_cls = get_algorithm(cfg.algorithm.name)

    start_step = 0
    state, unsent = restored_checkpoint(load_training_state, args.resume_from)
    if state is not None:
        start_step = restore_training_state(state, models=models, optimizer=optimizer, scheduler=scheduler)
        # Keep the workers' augmentation streams distinct after a restore.
        torch.manual_seed(cfg.train.seed * 1000 + rank + start_step)
    else:
        # A fresh start: model.init / model.auxiliary_init, from the local files the driver resolved MLflow URIs
        # into (it checked them and printed the reports; every worker loads the same weights).
        init_models(cfg, models, classes, args.init)
    models = {role: ray.train.torch.prepare_model(m) for role, m in models.items()}
    for role in algorithm_cls.frozen_roles:
        teacher = load_teacher(str(cfg.model.teacher), args.tracking_uri, classes, trust_pickle=cfg.model.trust_pickle)
        models[role] = freeze(teacher).to(device)
    algorithm = algorithm_cls(models, cfg.algorithm.resolved_params())
    algorithm.configure_ema(cfg.train.ema_decay, cfg.train.ema_start)
    held = held_backbones(cfg, algorithm)
    if state is not None:
        algorithm.load_state_dict(state["algorithm"])  # EMA teacher, step counters, class-wise thresholds
        algorithm.load_ema_state_dict(state.get("ema", {}))

    rank_zero = RankZero.open(args, rank, start_step, unsent if state is not None else None)
    t = cfg.train
    labeled_it = cycle(ray.train.get_dataset_shard("labeled"), t.batch_size, "labeled split")
    unlabeled_it = (
        cycle(ray.train.get_dataset_shard("unlabeled"), t.batch_size * t.mu, "unlabeled split")
        if algorithm_cls.needs_unlabeled
        else None
    )
    precise_bn = PreciseBN(t.precise_bn_batches)
    final_counts: dict[str, EvalCounts] = {}

    def step(_: int) -> tuple[Mapping[str, Tensor], int]:
        lb = next(labeled_it)
        ub = next(unlabeled_it) if unlabeled_it is not None else None
        labeled, unlabeled = stream_batches(lb, ub, cfg.augment, device, input_memory_format(cfg))
        if rank == 0:
            precise_bn.remember(labeled, unlabeled)
        _, metrics = optimize(algorithm, optimizer, scheduler, labeled, unlabeled, grad_clip=t.grad_clip,
                             held=held)
        return metrics, len(lb["label"]) + (0 if ub is None else len(ub["true_label"]))

    def test_split(done: int, last: bool) -> dict[str, float]:
        if rank != 0:
            return {}
        precise_bn.apply({role: unwrap(m) for role, m in algorithm.deployed_models().items()}, device)
        counts = evaluate(algorithm.deployed_models(), cfg, num_classes, device)
        if last:
            final_counts.update(counts)
        metrics = {}
        for role, c in counts.items():
            for key, value in c.summary().items():
                metrics[f"eval/{key}_{role}"] = value
            for name, value in zip(classes, c.per_class().tolist(), strict=True):
                metrics[f"eval_class/{name}_{role}"] = value
        return metrics

    def publish(report: Report) -> None:
        rank_zero.log(progress_line(report.metrics, t.iterations), report.metrics, report.step)
        if rank_zero.tracker is not None and final_counts:
            log_final_evaluation(rank_zero.tracker, final_counts, classes)

        def save(directory: str) -> None:
            save_training_state(
                directory, models=algorithm.trainable_models(), optimizer=optimizer, scheduler=scheduler,
                step=report.step, algorithm_state=algorithm.state_dict(), model_names=names, num_classes=num_classes,
                meta=model_meta(cfg, classes), ema=algorithm.ema_state_dict(),
            )

        rank_zero.report_to_ray(report.metrics, report.step, save if report.due.checkpoint and rank == 0 else None)

    hooks = Hooks(step=step, report=publish, evaluate=test_split, extras=data_extras(args, scheduler),
                  reduce=mean_across_workers, after_step=rank_zero.after_step(), workers=ctx.get_world_size())
    return hooks, start_step


def progress_line(metrics: Mapping[str, float], iterations: int) -> str:
    """`step 40/400 loss 2.31 ...`: the headline numbers of one report, for the console."""
    shown = [f"step {int(metrics['step'])}/{iterations}"]
    for key in sorted(metrics):
        if key.startswith(("loss/total", "pseudo/mask_rate", "pseudo/accuracy", "eval/top1")):
            value = metrics[key]
            if not math.isnan(value):
                shown.append(f"{key.split('/', 1)[1]} {value:.3f}")
    shown.append(f"clips/s {metrics['perf/clips_per_s']:.1f}")
    return " | ".join(shown)


def log_final_evaluation(tracker: Tracker, counts: Mapping[str, EvalCounts], classes: list[str]) -> None:
    """Per-class accuracy table and confusion-matrix PNG of every model. Without a tracking server they are
    skipped with a warning: failing here would discard the finished training (the final checkpoint comes next)."""
    rows = ["class," + ",".join(counts)]
    per_class = {role: c.per_class().tolist() for role, c in counts.items()}
    for i, name in enumerate(classes):
        rows.append(name + "," + ",".join(f"{per_class[r][i]:.4f}" for r in counts))
    try:
        tracker.log_text("\n".join(rows) + "\n", "eval/per_class_accuracy.csv")
        for role, c in counts.items():
            tracker.log_figure(confusion_figure(c.confusion, classes, title=f"{role} confusion"),
                               f"eval/confusion_{role}.png")
    except Exception as err:  # MLflow unreachable: the metrics are buffered, these artifacts are not
        sys.stderr.write(f"warning: final evaluation artifacts not logged to MLflow: {err}\n")
