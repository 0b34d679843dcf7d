"""Manifest records -> Ray Data streams of decoded clips for the Train workers.

Three datasets, each split across the workers by Ray Train:
  labeled   {"clip": (T, H, W, 3) uint8, "label": int64}           repeats (random clip position each time)
  unlabeled {"clip": (T, H, W, 3) uint8, "true_label": int64       each video once per pass
             [, "target": (C,) float32 stored teacher probabilities, with data.pseudo_labels]}
  eval      {"clips": (N, T, H, W, 3) uint8, "label": int64}       N uniformly spaced clips per video
With augment.placement = data (the default on CPU) the training streams carry augmented, normalised views
instead of "clip": labeled "video", unlabeled "weak" + "strong", each (3, T, h, w) float32.
The training streams are lazy (row numbers -> rows -> clips inside the tasks): the driver never holds a
list as long as the run, and Ray Data's backpressure bounds the object store.
A bad video (zero-byte, truncated, not a video, too slow to decode) is skipped, warned and counted by a
`SkipCounter` actor; the worker reports the count as `data/skipped_videos`.
With data.cache (ssl_core/data/clip_cache.py) the driver decodes every video once into a memory-mapped cache
before the streams start, and the tasks slice the same clips from it instead of decoding.

Try it alone: python -m workflows.runtime.streams --config configs/demo.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from ssl_core.data.clip_cache import ClipCache, cache_for_config, open_cache
from ssl_core.data.decode_base import DecodeError
from ssl_core.data.decoders import get_decoder
from ssl_core.data.manifest import VideoRecord
from workflows.runtime.ray_session import on_driver_node

if TYPE_CHECKING:  # the decode tasks import this module: keep torch and the model zoo out of them
    from ssl_core.config import Config

log = logging.getLogger("vidssl.data")
# Spans of row numbers per repeating stream at most: one item each in the plan (a long run gets longer spans).
_MAX_SPANS = 512
# Rows per task at the least: on 2 cores (128 px videos, 8 x 112^2 clips) 8-row blocks streamed ~0.4 of the
# raw decode rate per core, 32-row ~0.8, 64-row ~1.0 (docs/benchmarks.md); a task then runs ~1 s.
_MIN_BLOCK_ROWS = 64


@ray.remote(num_cpus=0)
class SkipCounter:
    """Paths of videos that could not be decoded, shared by all decode tasks of a run."""

    def __init__(self) -> None:
        self.paths: dict[str, str] = {}

    def add(self, path: str, reason: str) -> None:
        self.paths.setdefault(path, reason)

    def count(self) -> int:
        return len(self.paths)

    def report(self) -> dict[str, str]:
        return dict(self.paths)


# Rows are made from row numbers inside the decode tasks, so nothing proportional to `iterations x batch`
# ever exists on the driver: only this table (one entry per video) travels, once, through the object store.
_TABLES: dict[str, dict[str, np.ndarray]] = {}
_ORDERS: dict[tuple[str, int, int], np.ndarray] = {}


def record_table(records: Sequence[VideoRecord], targets: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Column arrays of a stream's videos: path, label[, target (N, C) stored probabilities]."""
    if not records:
        raise ValueError("no records to stream")
    table: dict[str, Any] = {
        "path": np.array([r.path for r in records], dtype=object),
        "label": np.array([r.label for r in records], dtype=np.int64),
    }
    if targets is not None:
        table["target"] = np.stack([targets[r.path] for r in records]).astype(np.float32)
    return table


def _table(ref: Any) -> dict[str, np.ndarray]:
    key = ref.hex()
    if key not in _TABLES:
        _TABLES.clear()  # one run's tables per worker process at a time
        _TABLES[key] = ray.get(ref)
    return _TABLES[key]


def _epoch_order(key: str, seed: int, epoch: int, n: int) -> np.ndarray:
    if (key, seed, epoch) not in _ORDERS:
        if len(_ORDERS) > 8:
            _ORDERS.clear()
        _ORDERS[(key, seed, epoch)] = np.random.default_rng([seed, epoch]).permutation(n)
    return _ORDERS[(key, seed, epoch)]


def rows_for_ids(
    ids: np.ndarray, table: Mapping[str, np.ndarray], seed: int, label_key: str, key: str = ""
) -> dict[str, np.ndarray]:
    """Rows `ids` of the repeating stream over `table`: pass e = id // N visits every video once, in the
    order of a permutation seeded by (seed, e). Each row carries its own seed, so the random clip position
    (and augmentation) is reproducible whichever worker decodes it."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(table["path"])
    index = np.empty(len(ids), dtype=np.int64)
    for epoch in np.unique(ids // n):
        at = ids // n == epoch
        index[at] = _epoch_order(key, seed, int(epoch), n)[ids[at] % n]
    rows: dict[str, np.ndarray] = {
        "path": table["path"][index],
        label_key: table["label"][index],
        "seed": ids + seed * 1_000_003,
    }
    if "target" in table:
        rows["target"] = table["target"][index]
    return rows


def _augment(clips: np.ndarray, seeds: np.ndarray, augment: dict[str, Any], views: tuple[str, ...]
             ) -> dict[str, np.ndarray]:
    """augment.placement = data: uint8 clips (B, T, H, W, 3) -> normalised float views (B, 3, T, h, w), each
    row's parameters drawn from its own seed (reproducible whichever task decodes it), applied batched."""
    # here: the decode tasks import this module: torch only in the tasks that augment
    import torch

    from ssl_core.data.batched_augment import apply_view, draw_view_per_row
    from ssl_core.data.transforms import AugmentConfig

    torch.set_num_threads(1)  # many decode tasks share the cores; intra-op threads would oversubscribe them
    aug = AugmentConfig(**augment)
    frames = torch.from_numpy(np.ascontiguousarray(clips))
    out = {}
    for view in views:
        params = draw_view_per_row([int(s) * 7 + len(view) for s in seeds], clips.shape[2], clips.shape[3], aug,
                                   strong=view == "strong")
        out[view] = apply_view(frames, params, aug).numpy()
    return out


def _backend(opts: dict[str, Any]) -> ModuleType | ClipCache:
    """The decode backend of a task config (popping its keys): the run's clip cache when the driver built one
    (opened once per worker process), else the data.decoder module. Outside any try: a missing backend or an
    unreachable cache is a setup error, not a bad video."""
    decoder = opts.pop("decoder", "pyav")
    cache_dir = opts.pop("cache_dir", None)
    return open_cache(cache_dir, fallback=decoder) if cache_dir else get_decoder(decoder)


def train_batches(
    spans: dict[str, np.ndarray],
    *,
    table: Any,
    seed: int,
    label_key: str,
    cfg: dict[str, Any],
    counter: Any,
    chunk: int,
    augment: dict[str, Any] | None = None,
    views: tuple[str, ...] = (),
) -> Iterator[dict[str, np.ndarray]]:
    """Spans of row numbers [start, stop) -> rows -> decoded clips [-> augmented views], `chunk` rows at a time:
    one Ray Data task does all of it, stacks each chunk's clips into one array (no per-row conversion) and
    yields it as soon as it is decoded.

    cfg: num_frames, stride, size [, decoder ("pyav" | "torchcodec"), timeout_s (seconds or None), max_pixels
    (data.max_decode_pixels), threads, cache_dir (the clip cache's folder, or None)]."""
    ids = np.concatenate([np.arange(a, b) for a, b in zip(spans["start"], spans["stop"], strict=True)])
    opts = dict(cfg)
    backend = _backend(opts)
    for start in range(0, len(ids), chunk):
        rows = rows_for_ids(ids[start : start + chunk], _table(table), seed, label_key, key=table.hex())
        kept, clips = [], []
        for i, (path, row_seed) in enumerate(zip(rows["path"], rows["seed"], strict=True)):
            try:
                clips.append(backend.decode_clip(path, rng=np.random.default_rng(int(row_seed)), **opts))
                kept.append(i)
            except DecodeError as err:
                log.warning("skipping unreadable video %s: %s", path, err)
                counter.add.remote(path, str(err))
        out = {k: v[kept] for k, v in rows.items() if k not in ("path", "seed")}
        shape = (0, cfg["num_frames"], cfg["size"], cfg["size"], 3)
        stacked = np.stack(clips) if clips else np.empty(shape, dtype=np.uint8)
        if augment is None:
            out["clip"] = stacked
        else:
            out.update(_augment(stacked, rows["seed"][kept], augment, views))
        yield out


def resolve_placement(placement: str, use_gpu: bool) -> str:
    """augment.placement "auto": on the training device when it is a GPU, on the data workers otherwise."""
    if placement == "auto":
        return "device" if use_gpu else "data"
    return placement


def _decode_eval_row(row: dict[str, Any], *, cfg: dict[str, Any], counter: Any) -> list[dict[str, Any]]:
    """cfg: num_frames, stride, size, num_clips [, decoder, timeout_s, max_pixels, threads, cache_dir] (as in
    train_batches)."""
    opts = dict(cfg)
    backend = _backend(opts)
    try:
        clips = backend.decode_eval_clips(row["path"], **opts)
    except DecodeError as err:
        log.warning("skipping unreadable video %s: %s", row["path"], err)
        counter.add.remote(row["path"], str(err))
        return []
    return [{"clips": clips, "label": row["label"]}]


def build_datasets(
    cfg: Config,
    labeled: Sequence[VideoRecord],
    unlabeled: Sequence[VideoRecord],
    test: Sequence[VideoRecord],
    counter: Any,
    *,
    with_unlabeled: bool,
    targets: Mapping[str, np.ndarray] | None = None,
) -> dict[str, ray.data.Dataset]:
    """The Ray datasets a training run consumes, sized so every worker gets `train.iterations` batches.

    Streams are lazy: row numbers -> rows -> decoded clips (-> augmented views), each step fused into one
    task, so Ray Data's backpressure bounds what is in flight however long the run or large the manifest."""
    d, t, workers = cfg.data, cfg.train, cfg.scaling.num_workers
    # data.cache: built (or reused) here, once, before any stream; the tasks open it by its folder. Every
    # split's videos go in, whatever the algorithm streams, so runs of one dataset share one cache.
    cache, cache_report = cache_for_config(cfg, [r.path for r in (*labeled, *unlabeled, *test)])
    log.log(logging.WARNING if cache_report.warning else logging.INFO, cache_report.line())
    clip_cfg = {"num_frames": d.num_frames, "stride": d.stride, "size": d.size}
    # Each decode task has its share of a core: FFmpeg's own threads would only oversubscribe it.
    decode_cfg = {**clip_cfg, "decoder": d.decoder, "timeout_s": d.decode_timeout_s,
                  "max_pixels": d.max_decode_pixels, "threads": max(1, int(d.decode_cpus)),
                  "cache_dir": str(cache.directory) if cache is not None else None}
    on_data = resolve_placement(cfg.augment.placement, cfg.scaling.use_gpu) == "data"
    augment = dataclasses.asdict(cfg.augment)
    # A little slack beyond the exact need keeps `drop_last` from starving the last step of a worker.
    steps = t.iterations + 1

    def stream(table: dict[str, Any], num_rows: int, seed: int, label_key: str, batch: int,
               views: tuple[str, ...]) -> ray.data.Dataset:
        # A task decodes chunks of >= _MIN_BLOCK_ROWS rows (enough work to amortise its overhead) from a span
        # of row numbers; spans are capped in number so a very long run keeps a small plan. The spans are
        # items, not a ray.data.range: a read task takes a whole CPU whatever data.decode_cpus says, and two
        # sweep trials' reads held both CPUs of the test machine while their decode tasks waited (a hang).
        rows = max(batch, _MIN_BLOCK_ROWS)
        num_spans = min(max(1, math.ceil(num_rows / rows)), _MAX_SPANS)
        edges = np.linspace(0, num_rows, num_spans + 1).round().astype(int)
        spans = [{"start": int(a), "stop": int(b)} for a, b in zip(edges[:-1], edges[1:], strict=True)]
        kwargs = {"table": ray.put(table), "seed": seed, "label_key": label_key, "cfg": decode_cfg,
                  "counter": counter, "chunk": rows, "augment": augment if on_data else None, "views": views}
        ds = ray.data.from_items(spans, override_num_blocks=num_spans)
        ds = ds.map_batches(train_batches, fn_kwargs=kwargs, batch_size=None, num_cpus=d.decode_cpus)
        # Hand each decoded batch on at once (in two blocks): at the default 128 MiB target a task first decodes
        # ~500 clips, and the first training step waited for them (25 s on 2 cores; a target of 1.5 batches
        # still held back ~4 batches, as Ray's block size estimate runs above the array bytes).
        ds.context.target_max_block_size = int(0.5 * rows * row_bytes(views))
        return ds

    def row_bytes(views: tuple[str, ...]) -> int:
        if on_data:
            return len(views) * 4 * 3 * d.num_frames * cfg.augment.crop_size**2  # float32 views
        return d.num_frames * d.size**2 * 3  # the uint8 clip

    datasets = {
        "labeled": stream(record_table(labeled), steps * t.batch_size * workers, t.seed, "label", t.batch_size,
                          ("video",))
    }
    if with_unlabeled:
        unl_batch = t.batch_size * t.mu
        datasets["unlabeled"] = stream(record_table(unlabeled, targets), steps * unl_batch * workers, t.seed + 1,
                                       "true_label", unl_batch, ("weak", "strong"))
    eval_items = [{"path": r.path, "label": r.label} for r in test]
    eval_ds = ray.data.from_items(eval_items, override_num_blocks=max(1, math.ceil(len(eval_items) / 8)))
    datasets["eval"] = eval_ds.flat_map(
        _decode_eval_row,
        fn_kwargs={"cfg": {**decode_cfg, "num_clips": d.eval_clips}, "counter": counter},
        **evaluation_decode_resources(d.decode_cpus),
    )
    return datasets


def evaluation_decode_resources(decode_cpus: float) -> dict[str, Any]:
    """Ray task options of the decode tasks that read evaluation clips while training waits for them.

    They reserve no CPU: while the worker evaluates, the training streams' decode tasks, paused by backpressure
    with their outputs unconsumed, keep holding theirs, and a pretraining on 2 CPUs waited forever for k-NN decode
    tasks that could not be scheduled (Ray Data: "Cluster resources are not enough to run any task"). The CPUs
    those paused tasks hold sit idle meanwhile; `concurrency` keeps as many tasks running as the reservation allowed."""
    cpus = ray.cluster_resources().get("CPU", 1.0)
    return {"num_cpus": 0, "concurrency": max(1, int(cpus / decode_cpus))}


def main(argv: Sequence[str] | None = None) -> None:
    # here: the decode tasks import this module: keep torch (the config imports it) out of them
    from ssl_core.config import load_config
    from ssl_core.data.splits import prepare_data

    parser = argparse.ArgumentParser(description="Stream a few batches of decoded clips (a smoke test).")
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    data = prepare_data(cfg, run_dir=None)
    counter = SkipCounter.options(**on_driver_node()).remote()
    datasets = build_datasets(cfg, data.labeled, data.unlabeled, data.test, counter, with_unlabeled=True)
    for i, batch in enumerate(datasets["unlabeled"].iter_batches(batch_size=cfg.train.batch_size)):
        print(f"batch {i}: clip {batch['clip'].shape} {batch['clip'].dtype}")
        if i + 1 >= args.batches:
            break
    print(f"skipped videos: {ray.get(counter.count.remote())}")


if __name__ == "__main__":
    main()
