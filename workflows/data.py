"""Manifest records -> Ray Data streams of decoded uint8 clips for the Train workers.

Three datasets, each split across the workers by Ray Train:
  labeled   {"clip": (T, H, W, 3) uint8, "label": int64}           repeats (random clip position each time)
  unlabeled {"clip": (T, H, W, 3) uint8, "true_label": int64       each video once per epoch
             [, "target": (C,) float32 stored teacher probabilities, with data.pseudo_labels]}
  eval      {"clips": (N, T, H, W, 3) uint8, "label": int64}       N uniformly spaced clips per video
A bad video (zero-byte, truncated, not a video) is skipped, warned and counted by a `SkipCounter` actor;
the worker reports the count as `data/skipped_videos`.

Try it alone: python -m workflows.data --config configs/demo.yaml
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from ssl_core.data.decode import DecodeError, decode_clip, decode_eval_clips
from ssl_core.data.manifest import VideoRecord

if TYPE_CHECKING:  # the decode tasks import this module: keep torch and the model zoo out of them
    from ssl_core.config import Config

log = logging.getLogger("vidssl.data")


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


def repeated_items(
    records: Sequence[VideoRecord],
    num_rows: int,
    seed: int,
    label_key: str,
    targets: Mapping[str, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """`num_rows` rows cycling through `records`, reshuffled each pass (the repeating stream); with
    `targets`, each row also carries its video's stored probabilities as "target".

    Each row carries its own seed so the random clip position is reproducible."""
    if not records:
        raise ValueError("no records to stream")
    items: list[dict[str, Any]] = []
    epoch = 0
    while len(items) < num_rows:
        order = np.random.default_rng([seed, epoch]).permutation(len(records))
        for i in order[: num_rows - len(items)]:
            r = records[int(i)]
            item = {"path": r.path, label_key: r.label, "seed": len(items) + seed * 1_000_003}
            if targets is not None:
                item["target"] = targets[r.path]
            items.append(item)
        epoch += 1
    return items


def _decode_train_row(row: dict[str, Any], *, cfg: dict[str, int], counter: Any) -> list[dict[str, Any]]:
    rng = np.random.default_rng(int(row["seed"]))
    try:
        clip = decode_clip(row["path"], rng=rng, **cfg)
    except DecodeError as err:
        log.warning("skipping unreadable video %s: %s", row["path"], err)
        counter.add.remote(row["path"], str(err))
        return []
    out = {k: v for k, v in row.items() if k not in ("path", "seed")}
    out["clip"] = clip
    return [out]


def _decode_eval_row(row: dict[str, Any], *, cfg: dict[str, int], counter: Any) -> list[dict[str, Any]]:
    try:
        clips = decode_eval_clips(row["path"], **cfg)
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
    """The Ray datasets a training run consumes, sized so every worker gets `train.iterations` batches."""
    d, t, workers = cfg.data, cfg.train, cfg.scaling.num_workers
    clip_cfg = {"num_frames": d.num_frames, "stride": d.stride, "size": d.size}
    # A little slack beyond the exact need keeps `drop_last` from starving the last step of a worker.
    steps = t.iterations + 1

    def stream(items: list[dict[str, Any]], batch: int) -> ray.data.Dataset:
        blocks = max(1, math.ceil(len(items) / max(batch, 1)))
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        return ds.flat_map(_decode_train_row, fn_kwargs={"cfg": clip_cfg, "counter": counter},
                           num_cpus=d.decode_cpus)

    datasets = {
        "labeled": stream(
            repeated_items(labeled, steps * t.batch_size * workers, t.seed, "label"), t.batch_size
        )
    }
    if with_unlabeled:
        unl_batch = t.batch_size * t.mu
        datasets["unlabeled"] = stream(
            repeated_items(unlabeled, steps * unl_batch * workers, t.seed + 1, "true_label", targets), unl_batch
        )
    eval_items = [{"path": r.path, "label": r.label} for r in test]
    eval_ds = ray.data.from_items(eval_items, override_num_blocks=max(1, math.ceil(len(eval_items) / 8)))
    datasets["eval"] = eval_ds.flat_map(
        _decode_eval_row,
        fn_kwargs={"cfg": {**clip_cfg, "num_clips": d.eval_clips}, "counter": counter},
        num_cpus=d.decode_cpus,
    )
    return datasets


def main(argv: Sequence[str] | None = None) -> None:
    from ssl_core.config import load_config
    from ssl_core.data.prepare import prepare_data

    parser = argparse.ArgumentParser(description="Stream a few batches of decoded clips (a smoke test).")
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    data = prepare_data(cfg, run_dir=None)
    counter = SkipCounter.remote()
    datasets = build_datasets(cfg, data.labeled, data.unlabeled, data.test, counter, with_unlabeled=True)
    for i, batch in enumerate(datasets["unlabeled"].iter_batches(batch_size=cfg.train.batch_size)):
        print(f"batch {i}: clip {batch['clip'].shape} {batch['clip'].dtype}")
        if i + 1 >= args.batches:
            break
    print(f"skipped videos: {ray.get(counter.count.remote())}")


if __name__ == "__main__":
    main()
