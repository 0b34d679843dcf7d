"""Ray-free pretraining: the same step as the Ray Train worker, clips decoded by threads of this process.

For machines without Ray (GPU boxes), and to check an objective quickly:

    python -m ssl_core.pretrain --config configs/pretrain_demo.yaml --set train.iterations=60 [--device cuda]

Writes `<output.storage>/<run name>/`: labeled_split.csv (the k-NN memory bank) and checkpoint_<step>/state.pt
(ssl_core.checkpoint format), so `model.init=<that folder>` starts a training run from the backbone. No MLflow.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ssl_core import allocator
from ssl_core.data.clip_cache import ClipCache
from ssl_core.data.decode import DecodeError
from ssl_core.data.manifest import VideoRecord
from ssl_core.loop import prefetched
from ssl_core.pretrain.augment import pretrain_views
from ssl_core.pretrain.config import PretrainSetup
from ssl_core.pretrain.data import decode_views
from ssl_core.pretrain.knn import knn_accuracy, linear_probe, video_features
from ssl_core.pretrain.step import Pretrainer, build_net, pretrain_optimize, save_pretrain_checkpoint
from ssl_core.run_folder import claim_run_dir, stamped


def view_batches(
    paths: Sequence[str], batch: int, setup: PretrainSetup, seed: int, pool: ThreadPoolExecutor, reader: Any,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless batches ((B, rho, T, H, W, 3) uint8 clips, (B, rho) pretext labels) over every path, reshuffled
    each pass, decoded two batches ahead by `pool`. Unreadable videos are skipped."""
    rng = np.random.default_rng(seed)
    d, p = setup.base.data, setup.pretrain

    def tasks() -> Iterator[tuple[str, int]]:
        while True:
            for i in rng.permutation(len(paths)):
                yield paths[int(i)], int(rng.integers(2**62))

    def decode(path: str, row_seed: int) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            return decode_views(reader, path, row_seed, rho=p.rho, num_frames=d.num_frames, stride=d.stride,
                                size=d.size, pretext=p.pretext)
        except DecodeError:
            return None

    for items in prefetched(pool, decode, tasks(), batch):
        yield torch.from_numpy(np.stack([v for v, _ in items])), torch.from_numpy(np.stack([y for _, y in items]))


def record_features(
    backbone: nn.Module, records: Sequence[VideoRecord], read_eval: Callable[..., np.ndarray], setup: PretrainSetup,
    device: torch.device, pool: ThreadPoolExecutor, batch: int = 8,
) -> tuple[Tensor, Tensor]:
    """(N, F) normalised features and (N,) labels of the readable records (evaluation clips, centre crop)."""
    d = setup.base.data

    def read(r: VideoRecord) -> np.ndarray | None:
        try:
            return read_eval(r.path, num_frames=d.num_frames, stride=d.stride, size=d.size, num_clips=d.eval_clips)
        except DecodeError:
            return None

    was_training = backbone.training
    backbone.eval()
    feats, labels, pending = [], [], []
    for record, clips in zip(records, pool.map(read, records), strict=True):
        if clips is not None:
            pending.append(clips)
            labels.append(record.label)
        if len(pending) == batch:
            feats.append(video_features(backbone, torch.from_numpy(np.stack(pending)), setup.base.augment, device))
            pending = []
    if pending:
        feats.append(video_features(backbone, torch.from_numpy(np.stack(pending)), setup.base.augment, device))
    backbone.train(was_training)
    return torch.cat(feats), torch.tensor(labels, dtype=torch.long)


def run_local_pretrain(setup: PretrainSetup, *, device: str = "cpu", decode_threads: int = 2,
                       run_dir: Path | None = None) -> dict[str, Any]:
    """Pretrain in this process; returns the k-NN history, the final k-NN / probe accuracy, speed, run folder."""
    from ssl_core.data import decode as decode_module
    from ssl_core.data.clip_cache import cache_for_config
    from ssl_core.data.decode import decode_eval_clips
    from ssl_core.data.splits import prepare_data
    from ssl_core.loop import build_optimizer
    from ssl_core.schedule import build_scheduler

    cfg, p, t = setup.base, setup.pretrain, setup.base.train
    allocator.configure(cfg.scaling)
    torch.manual_seed(t.seed)
    if run_dir is None:
        name = cfg.tracking.run_name or stamped(f"pretrain-{p.objective}-local")
        _, run_dir = claim_run_dir(cfg.output.storage, name)
    else:  # a folder the caller chose (it may exist: e.g. the Ray run's folder)
        run_dir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg, run_dir)  # the labeled split: the k-NN memory bank (labels reach no loss)
    classes = list(data.manifest.classes)
    train_paths = [r.path for r in (*data.labeled, *data.unlabeled)]  # every train video, without its label
    dev = torch.device(device)
    net, reports = build_net(setup, classes)
    for report in reports:
        print(report.line(), flush=True)
    net = net.to(dev)
    trainer = Pretrainer(net, p, iterations=t.iterations, queue_size=setup.queue_size(len(train_paths)),
                         seed=t.seed)
    optimizer = build_optimizer(cfg, {"net": net})
    scheduler = build_scheduler(optimizer, warmup=t.warmup_iters, total=t.iterations)
    pool = ThreadPoolExecutor(max(1, decode_threads))
    cache: ClipCache | None
    cache, cache_report = cache_for_config(cfg, [r.path for r in (*data.labeled, *data.unlabeled, *data.test)],
                                           workers=max(1, decode_threads))
    print(cache_report.line(), flush=True)
    reader: Any = cache if cache is not None else decode_module
    read_eval = cache.decode_eval_clips if cache is not None else decode_eval_clips
    batches = view_batches(train_paths, t.batch_size, setup, t.seed, pool, reader)

    def monitor() -> dict[str, float]:
        bank, bank_y = record_features(net.backbone, data.labeled, read_eval, setup, dev, pool)
        queries, query_y = record_features(net.backbone, data.test, read_eval, setup, dev, pool)
        return knn_accuracy(bank, bank_y, queries, query_y, len(classes), k=p.knn_k, temperature=p.knn_temperature)

    history: list[tuple[int, float]] = []
    if p.knn_every:  # the curve's first point: the features before any step
        history.append((0, monitor()["knn/top1"]))
        print(f"step 0/{t.iterations}: k-NN top-1 {100 * history[0][1]:.1f} %", flush=True)
    window: dict[str, list[float]] = {}
    clips_seen, train_s = 0, 0.0
    result: dict[str, Any] = {}
    for step in range(t.iterations):
        started = time.perf_counter()
        clips, pretext = next(batches)
        views = pretrain_views(clips.to(dev), cfg.augment, p)
        metrics = pretrain_optimize(trainer, optimizer, scheduler, views, pretext if p.pretext != "none" else None,
                                    grad_clip=t.grad_clip)
        train_s += time.perf_counter() - started
        clips_seen += clips.shape[0] * clips.shape[1]
        for key, value in metrics.items():
            if not math.isnan(value):
                window.setdefault(key, []).append(value)
        done = step + 1
        last = done == t.iterations
        if done % t.log_every == 0 or last:
            means = {k: sum(v) / len(v) for k, v in window.items()}
            window = {}
            shown = " ".join(f"{k}={v:.3f}" for k, v in sorted(means.items()))
            print(f"step {done}/{t.iterations}: {shown} it/s={done / max(train_s, 1e-9):.2f}", flush=True)
        if (p.knn_every and done % p.knn_every == 0) or last:
            knn = monitor()
            history.append((done, knn["knn/top1"]))
            print(f"step {done}/{t.iterations}: k-NN top-1 {100 * knn['knn/top1']:.1f} % "
                  f"top-5 {100 * knn['knn/top5']:.1f} % (chance {100 / len(classes):.1f} %)", flush=True)
            result.update(knn)
        if done % t.checkpoint_every == 0 or last:
            save_pretrain_checkpoint(run_dir / f"checkpoint_{done:06d}", setup=setup, trainer=trainer,
                                     optimizer=optimizer, scheduler=scheduler, step=done, classes=classes)
            for old in sorted(run_dir.glob("checkpoint_*"))[: -t.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
    if p.probe_steps:
        bank, bank_y = record_features(net.backbone, data.labeled, read_eval, setup, dev, pool)
        queries, query_y = record_features(net.backbone, data.test, read_eval, setup, dev, pool)
        result.update(linear_probe(bank, bank_y, queries, query_y, len(classes), steps=p.probe_steps,
                                   weight_decay=p.probe_weight_decay))
    pool.shutdown()
    result.update({"knn_history": history, "it_per_s": t.iterations / max(train_s, 1e-9),
                   "clips_per_s": clips_seen / max(train_s, 1e-9), "train_seconds": train_s, "run_dir": str(run_dir),
                   "chance": 1 / len(classes)})
    return result
