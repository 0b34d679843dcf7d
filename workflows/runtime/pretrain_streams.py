"""Pretraining streams (Ray Data) for the Train workers of workflows.pretrain.

  train {"clips": (rho, T, H, W, 3) uint8 | "views": (rho, 3, T, h, w) float32, "pretext": (rho,) int64}
        every train video (labeled split included), no label column: labels cannot reach a loss. rho clips
        per video at independent random times (ssl_core.pretrain.data.decode_views); "views" when
        augment.placement = data (augmented in the decode task, one draw per clip), else uint8 clips.
        Absent when pretrain.objective_weight is 0 (the labels alone).
  labeled  as train, plus "label": int64, over the labeled split only; only when pretrain.labeled_weight > 0
        (semi-supervised pretraining: the classifier beside the objective learns from it).
  pseudo   as labeled, over data.pseudo_labels' videos under their teacher's top class (self-training's stage).
  knn   {"clips": (N, T, H, W, 3) uint8, "label": int64, "bank": int64}    rank 0's k-NN monitor: the labeled
        split (bank = 1, the memory bank) and the test split (bank = 0, the queries), N evaluation clips each.

The train stream is lazy like training's (workflows/runtime/streams.py: row numbers -> rows -> clips in one task), reads
the run's clip cache when the driver built one, and skips and counts unreadable videos.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from ssl_core.data.clip_cache import cache_for_config
from ssl_core.data.decode_base import DecodeError
from ssl_core.data.manifest import VideoRecord
from ssl_core.pretrain.data import decode_views
from workflows.runtime.streams import (
    _MAX_SPANS,
    _MIN_BLOCK_ROWS,
    _backend,
    _decode_eval_row,
    _table,
    evaluation_decode_resources,
    record_table,
    resolve_placement,
    rows_for_ids,
)

if TYPE_CHECKING:  # the decode tasks import this module: keep torch out of them
    from ssl_core.pretrain.config import PretrainSetup

log = logging.getLogger("vidssl.data")


def _augment_views(clips: np.ndarray, seeds: np.ndarray, augment: dict[str, Any], pretrain: dict[str, Any]
                   ) -> np.ndarray:
    """augment.placement = data: (n, rho, T, H, W, 3) uint8 -> (n, rho, 3, T, h, w) float32, one draw per clip."""
    # here: the decode tasks import this module: torch only in the tasks that augment
    import torch

    from ssl_core.data.transforms import AugmentConfig
    from ssl_core.pretrain.augment import pretrain_views
    from ssl_core.pretrain.config import PretrainConfig

    torch.set_num_threads(1)  # many decode tasks share the cores
    aug, p = AugmentConfig(**augment), PretrainConfig(**pretrain)
    frames = torch.from_numpy(np.ascontiguousarray(clips))
    made = []
    for i, seed in enumerate(seeds):
        torch.manual_seed(int(seed) * 7 + 5)  # per-row draws: reproducible whichever task decodes the row
        made.append(pretrain_views(frames[i : i + 1], aug, p)[0])
    if made:
        return torch.stack(made).numpy()
    return np.empty((0, p.rho, 3, clips.shape[2], aug.crop_size, aug.crop_size), dtype=np.float32)


def pretrain_batches(
    spans: dict[str, np.ndarray],
    *,
    table: Any,
    seed: int,
    cfg: dict[str, Any],
    counter: Any,
    chunk: int,
    rho: int,
    pretext: str,
    augment: dict[str, Any] | None = None,
    pretrain: dict[str, Any] | None = None,
    with_labels: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
    """Spans of row numbers -> rows -> rho decoded clips per video [-> augmented views] [+ class labels],
    `chunk` rows at a time.
    cfg: num_frames, stride, size, decoder, timeout_s, threads, cache_dir (as
    workflows.runtime.streams.train_batches)."""
    ids = np.concatenate([np.arange(a, b) for a, b in zip(spans["start"], spans["stop"], strict=True)])
    opts = dict(cfg)
    backend = _backend(opts)
    for start in range(0, len(ids), chunk):
        rows = rows_for_ids(ids[start : start + chunk], _table(table), seed, "label", key=table.hex())
        clips, labels, seeds, classes = [], [], [], []
        for path, row_seed, label in zip(rows["path"], rows["seed"], rows["label"], strict=True):
            try:
                views, pretext_labels = decode_views(backend, path, int(row_seed), rho=rho, pretext=pretext, **opts)
            except DecodeError as err:
                log.warning("skipping unreadable video %s: %s", path, err)
                counter.add.remote(path, str(err))
                continue
            clips.append(views)
            labels.append(pretext_labels)
            seeds.append(int(row_seed))
            classes.append(int(label))
        shape = (0, rho, cfg["num_frames"], cfg["size"], cfg["size"], 3)
        stacked = np.stack(clips) if clips else np.empty(shape, dtype=np.uint8)
        out = {"pretext": np.stack(labels) if labels else np.empty((0, rho), dtype=np.int64)}
        if with_labels:
            out["label"] = np.array(classes, dtype=np.int64)
        if augment is None:
            out["clips"] = stacked
        else:
            out["views"] = _augment_views(stacked, np.array(seeds, dtype=np.int64), augment, pretrain or {})
        yield out


def _decode_knn_row(row: dict[str, Any], *, cfg: dict[str, Any], counter: Any) -> list[dict[str, Any]]:
    return [{**out, "bank": row["bank"]} for out in _decode_eval_row(row, cfg=cfg, counter=counter)]


def build_pretrain_datasets(
    setup: PretrainSetup,
    train: Sequence[VideoRecord],
    labeled: Sequence[VideoRecord],
    pseudo: Sequence[VideoRecord],
    test: Sequence[VideoRecord],
    counter: Any,
) -> dict[str, ray.data.Dataset]:
    """The "train" stream (train.iterations batches of train.batch_size videos per worker) unless
    pretrain.objective_weight is 0; when pretrain.labeled_weight > 0 the "labeled" one (as many batches of
    pretrain.labeled_batch videos of the labeled split) and, with a pseudo-labeled set (`pseudo`, under the teacher's
    labels), the "pseudo" one (batches of pretrain.pseudo_batch); the "knn" set."""
    cfg, p = setup.base, setup.pretrain
    d, t, workers = cfg.data, cfg.train, cfg.scaling.num_workers
    cache, cache_report = cache_for_config(cfg, [r.path for r in (*train, *test)])
    log.log(logging.WARNING if cache_report.warning else logging.INFO, cache_report.line())
    decode_cfg = {"num_frames": d.num_frames, "stride": d.stride, "size": d.size, "decoder": d.decoder,
                  "timeout_s": d.decode_timeout_s, "max_pixels": d.max_decode_pixels,
                  "threads": max(1, int(d.decode_cpus)),
                  "cache_dir": str(cache.directory) if cache is not None else None}
    on_data = resolve_placement(cfg.augment.placement, cfg.scaling.use_gpu) == "data"

    def stream(records: Sequence[VideoRecord], batch: int, seed: int, with_labels: bool) -> ray.data.Dataset:
        num_rows = (t.iterations + 1) * batch * workers  # a little slack: drop_last never starves a worker
        rows = max(batch, _MIN_BLOCK_ROWS)
        num_spans = min(max(1, math.ceil(num_rows / rows)), _MAX_SPANS)
        edges = np.linspace(0, num_rows, num_spans + 1).round().astype(int)
        spans = [{"start": int(a), "stop": int(b)} for a, b in zip(edges[:-1], edges[1:], strict=True)]
        kwargs = {"table": ray.put(record_table(records)), "seed": seed, "cfg": decode_cfg, "counter": counter,
                  "chunk": rows, "rho": p.rho, "pretext": p.pretext,
                  "augment": dataclasses.asdict(cfg.augment) if on_data else None,
                  "pretrain": dataclasses.asdict(p) if on_data else None, "with_labels": with_labels}
        ds = ray.data.from_items(spans, override_num_blocks=num_spans)
        ds = ds.map_batches(pretrain_batches, fn_kwargs=kwargs, batch_size=None, num_cpus=d.decode_cpus)
        row_bytes = p.rho * (4 * 3 * d.num_frames * cfg.augment.crop_size**2 if on_data
                             else d.num_frames * d.size**2 * 3)
        # Hand each decoded chunk on at once (see workflows.runtime.streams: a large block target delays the first
        # step).
        ds.context.target_max_block_size = int(0.5 * rows * row_bytes)
        return ds

    datasets = {}
    if p.objective_weight > 0:
        datasets["train"] = stream(train, t.batch_size, t.seed, with_labels=False)
    if p.labeled_weight > 0:
        datasets["labeled"] = stream(labeled, p.labeled_batch, t.seed + 1, with_labels=True)
        if pseudo:
            datasets["pseudo"] = stream(pseudo, p.pseudo_batch, t.seed + 2, with_labels=True)
    items = [{"path": r.path, "label": r.label, "bank": 1} for r in labeled]
    items += [{"path": r.path, "label": r.label, "bank": 0} for r in test]
    knn = ray.data.from_items(items, override_num_blocks=max(1, math.ceil(len(items) / 8)))
    knn = knn.flat_map(_decode_knn_row, fn_kwargs={"cfg": {**decode_cfg, "num_clips": d.eval_clips},
                                                   "counter": counter}, **evaluation_decode_resources(d.decode_cpus))
    return {**datasets, "knn": knn}
