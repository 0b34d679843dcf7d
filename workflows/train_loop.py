"""`train_loop_per_worker`: what each Ray Train worker runs. It only wires things together:

  shard of decoded uint8 clips -> augment (weak / strong) -> ssl_step -> backward, clip, step, LR
  -> every log_every: metrics averaged over workers, reported to Ray Train and (rank 0) to MLflow
  -> every eval_every: multi-clip evaluation of every model the algorithm has
  -> every checkpoint_every: a checkpoint directory holding everything needed to continue.

Started by workflows/train.py (`python -m workflows.train --config configs/demo.yaml`).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ssl_core.algorithms import get_algorithm
from ssl_core.checkpoint import load_training_state, restore_training_state, save_training_state, unwrap
from ssl_core.config import Config, from_dict
from ssl_core.data.transforms import augment_batch, unlabeled_views, weak_transform
from ssl_core.evaluate import EvalCounts, video_probs
from ssl_core.models import build_model
from ssl_core.schedule import build_scheduler
from ssl_core.step import TRUE_LABEL_KEY, ssl_step
from workflows.plots import confusion_figure
from workflows.tracking import Tracker


def model_names(cfg: Config) -> dict[str, str]:
    """Role -> registered model name for the roles the configured algorithm needs."""
    names = {"primary": cfg.model.primary, "auxiliary": cfg.model.auxiliary}
    return {role: names[role] for role in get_algorithm(cfg.algorithm.name).roles}


def build_optimizer(cfg: Config, models: Mapping[str, nn.Module]) -> torch.optim.Optimizer:
    params = [p for m in models.values() for p in m.parameters()]
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=True)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def cycle(shard: Any, batch_size: int) -> Iterator[dict[str, Tensor]]:
    """Batches from a dataset shard forever; a new pass re-executes the stream (fresh random clips)."""
    while True:
        empty = True
        for batch in shard.iter_torch_batches(batch_size=batch_size, drop_last=True):
            empty = False
            yield batch
        if empty:
            raise RuntimeError("a training stream produced no full batch: too few readable videos per worker")


def mean_across_workers(sums: Mapping[str, float], counts: Mapping[str, int]) -> dict[str, float]:
    """Mean of each metric over the log window and over all workers (nan-free values only)."""
    keys = sorted(sums)
    local = torch.tensor([[sums[k], counts[k]] for k in keys], dtype=torch.float64).reshape(-1, 2)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(local)
    return {k: (s / c if c else math.nan) for k, (s, c) in zip(keys, local.tolist(), strict=True)}


def evaluate(
    models: Mapping[str, nn.Module], cfg: Config, num_classes: int, device: torch.device
) -> dict[str, EvalCounts]:
    """Counts for every model over this worker's eval shard, summed over all workers."""
    counts = {role: EvalCounts.zeros(num_classes) for role in models}
    for m in models.values():
        m.eval()
    shard = ray.train.get_dataset_shard("eval")
    for batch in shard.iter_torch_batches(batch_size=cfg.train.batch_size):
        for role, m in models.items():
            counts[role].add(video_probs(unwrap(m), batch["clips"], cfg.augment, device), batch["label"])
    for m in models.values():
        m.train()
    if dist.is_available() and dist.is_initialized():
        for c in counts.values():
            dist.all_reduce(c.confusion)
            dist.all_reduce(c.top5)
    return counts


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    cfg = from_dict(loop_config["config"])
    classes: list[str] = loop_config["classes"]
    num_classes = len(classes)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(cfg.scaling.torch_threads)
    torch.manual_seed(cfg.train.seed * 1000 + rank)
    device = ray.train.torch.get_device()
    names = model_names(cfg)
    models = {role: build_model(name, num_classes=num_classes) for role, name in names.items()}
    optimizer = build_optimizer(cfg, models)
    scheduler = build_scheduler(optimizer, warmup=cfg.train.warmup_iters, total=cfg.train.iterations)
    algorithm_cls = get_algorithm(cfg.algorithm.name)

    start_step = 0
    algorithm_state: dict[str, Any] = {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = load_training_state(ckpt_dir)
        start_step = restore_training_state(state, models=models, optimizer=optimizer, scheduler=scheduler)
        algorithm_state = state["algorithm"]
        # Keep the workers' augmentation streams distinct after a restore.
        torch.manual_seed(cfg.train.seed * 1000 + rank + start_step)
    models = {role: ray.train.torch.prepare_model(m) for role, m in models.items()}
    algorithm = algorithm_cls(models, cfg.algorithm.resolved_params())
    algorithm.load_state_dict(algorithm_state)

    tracker = Tracker(loop_config["tracking_uri"], loop_config["mlflow_run_id"]) if rank == 0 else None
    counter = loop_config["skip_counter"]
    t = cfg.train
    labeled_it = cycle(ray.train.get_dataset_shard("labeled"), t.batch_size)
    unlabeled_it = (
        cycle(ray.train.get_dataset_shard("unlabeled"), t.batch_size * t.mu)
        if algorithm_cls.needs_unlabeled
        else None
    )
    weak = weak_transform(cfg.augment)
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    window_start, window_clips = time.perf_counter(), 0

    for step in range(start_step, t.iterations):
        lb = next(labeled_it)
        labeled = {"video": augment_batch(lb["clip"], weak).to(device), "label": lb["label"].to(device)}
        unlabeled = None
        if unlabeled_it is not None:
            ub = next(unlabeled_it)
            weak_view, strong_view = unlabeled_views(ub["clip"], cfg.augment)
            unlabeled = {"weak": weak_view.to(device), "strong": strong_view.to(device),
                         TRUE_LABEL_KEY: ub["true_label"].to(device)}
        with autocast:
            out = ssl_step(algorithm, labeled, unlabeled)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for m in models.values() for p in m.parameters()], t.grad_clip
        )
        optimizer.step()
        scheduler.step()

        window_clips += labeled["video"].shape[0] + (0 if unlabeled is None else unlabeled["weak"].shape[0])
        step_metrics = {"loss/total": float(out.loss.detach()), "grad_norm": float(grad_norm)}
        step_metrics.update({k: float(v) for k, v in out.metrics.items()})
        for key, value in step_metrics.items():
            if not math.isnan(value):
                sums[key] += value
                counts[key] += 1
            else:
                sums.setdefault(key, 0.0)
                counts.setdefault(key, 0)

        done = step + 1
        last = done == t.iterations
        if done % t.log_every and done % t.eval_every and done % t.checkpoint_every and not last:
            continue
        metrics = mean_across_workers(sums, counts)
        sums.clear()
        counts.clear()
        elapsed = time.perf_counter() - window_start
        metrics["perf/clips_per_s"] = window_clips * ctx.get_world_size() / max(elapsed, 1e-9)
        metrics["lr"] = scheduler.get_last_lr()[0]
        metrics["data/skipped_videos"] = float(ray.get(counter.count.remote()))
        eval_counts = None
        if done % t.eval_every == 0 or last:
            eval_counts = evaluate(models, cfg, num_classes, device)
            for role, c in eval_counts.items():
                for key, value in c.summary().items():
                    metrics[f"eval/{key}_{role}"] = value
        metrics["step"] = done
        if tracker is not None:
            tracker.log_metrics(metrics, step=done)
            if last and eval_counts is not None:
                log_final_evaluation(tracker, eval_counts, classes)
        report_checkpoint = done % t.checkpoint_every == 0 or last
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = None
            if report_checkpoint and rank == 0:
                save_training_state(
                    tmp, models=models, optimizer=optimizer, scheduler=scheduler, step=done,
                    algorithm_state=algorithm.state_dict(), model_names=names, num_classes=num_classes,
                )
                ckpt = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=ckpt)
        window_start, window_clips = time.perf_counter(), 0


def log_final_evaluation(tracker: Tracker, counts: Mapping[str, EvalCounts], classes: list[str]) -> None:
    """Per-class accuracy table and confusion-matrix PNG of every model."""
    rows = ["class," + ",".join(counts)]
    per_class = {role: c.per_class().tolist() for role, c in counts.items()}
    for i, name in enumerate(classes):
        rows.append(name + "," + ",".join(f"{per_class[r][i]:.4f}" for r in counts))
    tracker.log_text("\n".join(rows) + "\n", "eval/per_class_accuracy.csv")
    for role, c in counts.items():
        tracker.log_figure(confusion_figure(c.confusion, classes, title=f"{role} confusion"),
                           f"eval/confusion_{role}.png")
