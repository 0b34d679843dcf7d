"""Ray-free pretraining: the same step as the Ray Train worker, clips decoded by threads of this process.

For machines without Ray (GPU boxes), and to check an objective quickly:

    python -m ssl_core.pretrain --config configs/pretrain_demo.yaml --set train.iterations=60 [--device cuda]

Writes `<output.storage>/<run name>/`: labeled_split.csv (the k-NN memory bank) and checkpoint_<step>/state.pt
(ssl_core.checkpoint format), so `model.init=<that folder>` starts a training run from the backbone. No MLflow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ssl_core import allocator
from ssl_core.checkpoint import keep_newest_checkpoints, step_checkpoint_dir
from ssl_core.data import decode as decode_module
from ssl_core.data.clip_cache import ClipCache, cache_for_config
from ssl_core.data.decode import decode_eval_clips
from ssl_core.data.decode_base import DecodeError
from ssl_core.data.manifest import VideoRecord
from ssl_core.engine import Hooks, Report, Schedule, run
from ssl_core.loop import prefetched
from ssl_core.pretrain.augment import pretrain_views
from ssl_core.pretrain.config import PretrainSetup
from ssl_core.pretrain.data import decode_views
from ssl_core.pretrain.knn import knn_accuracy, linear_probe, video_features
from ssl_core.pretrain.records import objective_records, prepare_pretrain_data, pseudo_records
from ssl_core.pretrain.step import (
    Pretrainer,
    build_net,
    init_objective_state,
    pretrain_optimize,
    save_pretrain_checkpoint,
)
from ssl_core.run_folder import claim_run_dir, discarded_on_failure, stamped
from ssl_core.schedule import build_scheduler
from ssl_core.train_step import build_optimizer
from ssl_core.user_errors import skipped_videos_line, unreadable_split


def view_batches(
    paths: Sequence[str], batch: int, setup: PretrainSetup, seed: int, pool: ThreadPoolExecutor, reader: Any,
    skipped: dict[str, str] | None = None, labels: Sequence[int] | None = None, what: str = "train split",
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless batches ((B, rho, T, H, W, 3) uint8 clips, (B, rho) pretext labels, or the (B,) class labels of
    the videos when `labels` gives them) over every path, reshuffled each pass, decoded two batches ahead by
    `pool`. Unreadable videos are skipped (path -> why into `skipped`); when none decodes, the iterator raises
    UnreadableVideos naming `what`."""
    rng = np.random.default_rng(seed)
    d, p = setup.base.data, setup.pretrain
    skipped = skipped if skipped is not None else {}

    def tasks() -> Iterator[tuple[str, int]]:
        while True:
            for i in rng.permutation(len(paths)):
                yield int(i), int(rng.integers(2**62))

    def decode(index: int, row_seed: int) -> tuple[np.ndarray, np.ndarray] | None:
        path = paths[index]
        try:
            views, pretext = decode_views(reader, path, row_seed, rho=p.rho, num_frames=d.num_frames,
                                          stride=d.stride, size=d.size, pretext=p.pretext,
                                          max_pixels=d.max_decode_pixels)
        except DecodeError as err:
            skipped.setdefault(path, str(err))
            return None
        return views, (np.int64(labels[index]) if labels is not None else pretext)

    def give_up() -> Exception:
        return unreadable_split(what, skipped, len(paths))

    for items in prefetched(pool, decode, tasks(), batch, patience=2 * len(paths), give_up=give_up):
        yield torch.from_numpy(np.stack([v for v, _ in items])), torch.from_numpy(np.stack([y for _, y in items]))


def record_features(
    backbone: nn.Module, records: Sequence[VideoRecord], read_eval: Callable[..., np.ndarray], setup: PretrainSetup,
    device: torch.device, pool: ThreadPoolExecutor, unreadable: dict[str, str], batch: int = 8, what: str = "test",
) -> tuple[Tensor, Tensor]:
    """(N, F) normalised features and (N,) labels of the readable records (evaluation clips, centre crop); the
    others go to `unreadable` (path -> why); UnreadableVideos naming the `what` split when none is readable."""
    d = setup.base.data

    def read(r: VideoRecord) -> np.ndarray | None:
        try:
            return read_eval(r.path, num_frames=d.num_frames, stride=d.stride, size=d.size, num_clips=d.eval_clips,
                             max_pixels=d.max_decode_pixels)
        except DecodeError as err:
            unreadable[r.path] = str(err)
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
    if not labels:  # nothing to hold a k-NN vote with: name the split, as the training stream does
        raise unreadable_split(f"{what} split", unreadable, len(records))
    return torch.cat(feats), torch.tensor(labels, dtype=torch.long)


def run_local_pretrain(setup: PretrainSetup, *, device: str = "cpu", decode_threads: int = 2,
                       run_dir: Path | None = None, on_report: Callable[[Report], None] | None = None,
                       ) -> dict[str, Any]:
    """Pretrain in this process; returns the k-NN history, the final k-NN / probe accuracy, speed, run folder.
    `on_report`: every report of the loop (the Ray worker's metric keys)."""
    cfg, p = setup.base, setup.pretrain
    allocator.configure(cfg.scaling)
    if run_dir is not None:  # a folder the caller chose (it may exist: e.g. the Ray run's folder)
        run_dir.mkdir(parents=True, exist_ok=True)
        return _pretrain_into(run_dir, setup, device, decode_threads, on_report)
    _, run_dir = claim_run_dir(cfg.output.storage, cfg.tracking.run_name or stamped(f"pretrain-{p.objective}-local"))
    with discarded_on_failure(run_dir):
        return _pretrain_into(run_dir, setup, device, decode_threads, on_report)


def _pretrain_into(run_dir: Path, setup: PretrainSetup, device: str, decode_threads: int,
                   on_report: Callable[[Report], None] | None) -> dict[str, Any]:
    cfg, p, t = setup.base, setup.pretrain, setup.base.train
    data = prepare_pretrain_data(cfg, run_dir)
    classes = list(data.manifest.classes)
    train_paths = [r.path for r in objective_records(data)]  # every train video, without its label
    pseudo = pseudo_records(data)
    dev = torch.device(device)
    pool = ThreadPoolExecutor(max(1, decode_threads))
    history: list[tuple[int, float]] = []
    skipped: dict[str, str] = {}  # unreadable video -> why
    result: dict[str, Any] = {}

    def build() -> tuple[Hooks, int]:
        net, reports = build_net(setup, classes)
        for report in reports:
            print(report.line(), flush=True)
        net = net.to(dev)
        trainer = Pretrainer(net, p, iterations=t.iterations, queue_size=setup.queue_size(len(train_paths)),
                             seed=t.seed)
        objective_state = init_objective_state(setup)
        if objective_state is not None and (taken := trainer.continue_objective(objective_state)):
            print(f"objective continued from model.init: {', '.join(taken)}", flush=True)
        optimizer = build_optimizer(cfg, {"net": net})
        scheduler = build_scheduler(optimizer, warmup=t.warmup_iters, total=t.iterations)
        cache: ClipCache | None
        cache, cache_report = cache_for_config(cfg, [r.path for r in (*data.labeled, *data.unlabeled, *data.test)],
                                               workers=max(1, decode_threads))
        print(cache_report.line(), flush=True)
        reader: Any = cache if cache is not None else decode_module
        read_eval = cache.decode_eval_clips if cache is not None else decode_eval_clips
        # Without the objective (objective_weight 0) the train videos would only be decoded to be ignored.
        batches = (view_batches(train_paths, t.batch_size, setup, t.seed, pool, reader, skipped)
                   if p.objective_weight > 0 else None)
        labeled_batches = (view_batches([r.path for r in data.labeled], p.labeled_batch, setup, t.seed + 1, pool,
                                        reader, skipped, labels=[r.label for r in data.labeled],
                                        what="labeled split")
                           if p.labeled_weight > 0 else None)
        # Its own stream: a step's labeled videos keep their share however large the set.
        pseudo_batches = (view_batches([r.path for r in pseudo], p.pseudo_batch, setup, t.seed + 2, pool, reader,
                                       skipped, labels=[r.label for r in pseudo], what="pseudo-labeled set")
                          if p.labeled_weight > 0 and pseudo else None)

        def features() -> tuple[Tensor, Tensor, Tensor, Tensor]:
            unreadable: dict[str, str] = {}
            bank, bank_y = record_features(net.backbone, data.labeled, read_eval, setup, dev, pool, unreadable,
                                           what="labeled")
            queries, query_y = record_features(net.backbone, data.test, read_eval, setup, dev, pool, unreadable,
                                               what="test")
            if unreadable.keys() - skipped.keys():  # said once per video, not at every k-NN evaluation
                print(skipped_videos_line(unreadable, "labeled and test", len(data.labeled) + len(data.test)
                                          - len(unreadable)), flush=True)
            skipped.update(unreadable)
            return bank, bank_y, queries, query_y

        def knn_of(feats: tuple[Tensor, Tensor, Tensor, Tensor]) -> dict[str, float]:
            return knn_accuracy(*feats, len(classes), k=p.knn_k, temperature=p.knn_temperature)

        if p.knn_every:  # the curve's first point: the features before any step
            history.append((0, knn_of(features())["knn/top1"]))
            print(f"step 0/{t.iterations}: k-NN top-1 {100 * history[0][1]:.1f} %", flush=True)

        def step(_: int) -> tuple[Mapping[str, Tensor], int]:
            views, pretext, labeled, clips = None, None, None, 0
            if batches is not None:
                train_clips, pretext = next(batches)
                views = pretrain_views(train_clips.to(dev), cfg.augment, p)
                clips += train_clips.shape[0] * train_clips.shape[1]
            if labeled_batches is not None:
                labeled_clips, labels = next(labeled_batches)
                if pseudo_batches is not None:
                    pseudo_clips, pseudo_labels = next(pseudo_batches)
                    labeled_clips, labels = torch.cat([labeled_clips, pseudo_clips]), torch.cat([labels, pseudo_labels])
                labeled = (pretrain_views(labeled_clips.to(dev), cfg.augment, p), labels)
                clips += labeled_clips.shape[0] * labeled_clips.shape[1]
            metrics = pretrain_optimize(trainer, optimizer, scheduler, views,
                                        pretext if p.pretext != "none" else None, grad_clip=t.grad_clip,
                                        labeled=labeled)
            return metrics, clips

        def monitor(done: int, last: bool) -> dict[str, float]:
            feats = features()
            knn = knn_of(feats)
            history.append((done, knn["knn/top1"]))
            if last and p.probe_steps:
                knn.update(linear_probe(*feats, len(classes), steps=p.probe_steps, weight_decay=p.probe_weight_decay))
            result.update(knn)
            return knn

        train_s = 0.0

        def show(report: Report) -> None:
            nonlocal train_s
            train_s += report.seconds
            if report.due.log:
                shown = " ".join(f"{k}={v:.3f}" for k, v in sorted(report.window.items()) if v == v)
                print(f"step {report.step}/{t.iterations}: {shown} it/s={report.step / train_s:.2f}", flush=True)
            if "knn/top1" in report.metrics:
                m = report.metrics
                print(f"step {report.step}/{t.iterations}: k-NN top-1 {100 * m['knn/top1']:.1f} % "
                      f"top-5 {100 * m['knn/top5']:.1f} % (chance {100 / len(classes):.1f} %)", flush=True)
            if on_report is not None:
                on_report(report)

        def checkpoint(report: Report) -> None:
            save_pretrain_checkpoint(step_checkpoint_dir(run_dir, report.step), setup=setup, trainer=trainer,
                                     optimizer=optimizer, scheduler=scheduler, step=report.step, classes=classes)
            keep_newest_checkpoints(run_dir, t.keep_checkpoints)

        return Hooks(step=step, report=show, evaluate=monitor, checkpoint=checkpoint, it_per_s=True,
                     extras=lambda: {"lr": scheduler.get_last_lr()[0], "data/skipped_videos": float(len(skipped))}), 0

    try:
        finished = run(t.seed, build, Schedule(t.iterations, t.log_every, p.knn_every, t.checkpoint_every))
    finally:
        pool.shutdown()
    train_s = max(finished.seconds, 1e-9)
    result.update({"knn_history": history, "it_per_s": finished.steps / train_s,
                   "clips_per_s": finished.clips / train_s, "train_seconds": finished.seconds,
                   "run_dir": str(run_dir), "chance": 1 / len(classes)})
    return result
