"""Video pipeline throughput, side by side on the same clips: raw PyAV vs vidssl's Ray Data pipeline vs
pytorchvideo vs ray.data.read_videos; then the pipeline's memory as the manifest grows.

    python -m bench.data_throughput            # ~3.5 min on 2 cores (+1.5 min to generate the videos once)
    python -m bench.data_throughput --quick    # < 60 s: 1 repeat, no memory or 100k-row runs

Every contestant decodes the same generated videos into clips of the same T, stride and short side (centre
crop), using the same number of CPU processes (`--cpus`, default: all cores):
  (a) raw      decode_clip of exactly the pipeline's clips (same videos, same random starts) in one process:
               the ceiling per core;
  (b) pipeline workflows.runtime.streams.build_datasets' labeled stream (lazy rows -> decode tasks of the config's
               default data.decode_cpus each), consumed on the driver; augmentation left to the device
               (augment.placement = device) so every contestant does the same work;
  (c) pytorchvideo LabeledVideoDataset (PyAV decoder, random clip sampler) through a torch DataLoader with
               `--cpus` worker processes; frames subsampled at the stride, resized and cropped in the worker;
  (b2) pipeline_1cpu  (full run only) the pipeline at one CPU per decode task (as many tasks as CPUs; shown,
               not in the ratios): the default's extra tasks fill each other's idle gaps between chunks;
  (d) read_videos ray.data.read_videos (one row per FRAME, needs decord) regrouped into the same clips with
               groupby(path).map_groups; skipped with the reason when decord is missing.
Then (full run only) the pipeline streams a fixed number of clips from manifests of `--memory-videos` sizes
(hard links to the same files) to a consumer slower than the decoders, while a thread samples the driver's RSS
and the object store's use; and it times reading a 100,000-row manifest up to the first decoded batch.

Rates are steady-state clips/s: from the first batch to the last (what a long training run sees); the time to
the first batch is its own column. Every contestant's processes are started before its rate is taken (the
pipeline's Ray workers by an untimed warm-up stream, kept alive by a worker soft limit: see main). The last
line is the figure: `pipeline_vs_raw=<b / (a * cpus)> pipeline_vs_pytorchvideo=<b / c>`.
Results also go to bench/out/data_throughput.json.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ssl_core.config import Config, DataConfig, with_overrides
from ssl_core.data import synthetic
from ssl_core.data.decode import decode_clip
from ssl_core.data.manifest import VideoRecord, load_manifest
from ssl_core.data.reencode import reencode

OUT = Path("bench/out")


@dataclass(frozen=True)
class ClipSpec:
    num_frames: int
    stride: int
    size: int
    fps: int


# --- the videos ------------------------------------------------------------------------------------


def make_videos(root: Path, *, classes: int, per_class: int, frames: int, side: int, fps: int) -> list[VideoRecord]:
    """Generated videos with short side `side` and a keyframe each second (re-used when already there).

    The generator draws 128 px videos (fast); workflows.reencode's re-encoder scales them to `side`, so the
    decoders see the frame size of a prepared real dataset (Kinetics copies are usually 256 or 320 px)."""
    stamp = root / "settings.json"
    settings = {"classes": classes, "per_class": per_class, "frames": frames, "side": side, "fps": fps}
    if not stamp.is_file() or json.loads(stamp.read_text()) != settings:
        shutil.rmtree(root, ignore_errors=True)
        drawn = root.with_name(root.name + "_drawn")
        shutil.rmtree(drawn, ignore_errors=True)
        synthetic.generate(drawn, classes=classes, videos_per_class=per_class, frames=frames, size=128, fps=fps)
        for record in load_manifest("csv", drawn).records:
            rel = Path(record.path).relative_to(drawn.resolve())
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            reencode(record.path, root / rel, short_side=side, fps=fps, keyframe_interval=fps, crf=23,
                     preset="veryfast")
        for name in ("manifest.csv", "classes.txt"):
            if (drawn / name).is_file():
                shutil.copy(drawn / name, root / name)
        shutil.rmtree(drawn)
        stamp.write_text(json.dumps(settings))
    return load_manifest("csv", root).records


def linked_manifest(base: Sequence[VideoRecord], root: Path, n: int) -> Path:
    """A csv manifest of `n` distinct paths: hard links to the base videos, so the files are real videos but
    the set costs no disk or encoding time."""
    csv = root / "manifest.csv"
    if csv.is_file() and sum(1 for _ in csv.open()) == n + 1:
        return root
    shutil.rmtree(root, ignore_errors=True)
    (root / "v").mkdir(parents=True)
    lines = ["path,label,split"]
    for i in range(n):
        src = base[i % len(base)]
        name = f"v/{i:06d}.mp4"
        os.link(src.path, root / name)
        lines.append(f"{name},c{src.label},train")
    csv.write_text("\n".join(lines) + "\n")
    return root


# --- the contestants -------------------------------------------------------------------------------


def pipeline_config(root: Path, spec: ClipSpec, clips: int, batch: int, decode_cpus: float) -> Config:
    iterations = max(1, clips // batch - 1)  # build_datasets streams (iterations + 1) * batch rows
    return with_overrides({}, [
        f"data.root={root}", "data.layout=csv", "data.labeled_fraction=1.0", "data.synthetic.enabled=false",
        f"data.num_frames={spec.num_frames}", f"data.stride={spec.stride}", f"data.size={spec.size}",
        f"data.decode_cpus={decode_cpus}", f"train.batch_size={batch}", f"train.iterations={iterations}",
        f"augment.crop_size={spec.size}", "augment.placement=device", "algorithm.name=supervised",
        "data.cache=off",  # the decode pipeline is what is measured here (bench.clip_cache measures the cache)
    ])


def pipeline_stream(cfg: Config, records: Sequence[VideoRecord]) -> Any:
    # here: the pytorchvideo contestant's process imports this module and runs without Ray
    from workflows.runtime.streams import SkipCounter, build_datasets

    counter = SkipCounter.remote()
    return build_datasets(cfg, records, [], records[:1], counter, with_unlabeled=False)["labeled"]


def the_clips(cfg: Config, records: Sequence[VideoRecord], n: int) -> list[tuple[str, int]]:
    """(path, seed) of the first n rows of the pipeline's labeled stream: the clips every contestant decodes."""
    # here: the pytorchvideo contestant's process imports this module and runs without Ray
    from workflows.runtime.streams import record_table, rows_for_ids

    rows = rows_for_ids(np.arange(n), record_table(records), cfg.train.seed, "label")
    return list(zip(rows["path"].tolist(), rows["seed"].tolist(), strict=True))


def run_raw(clips: Sequence[tuple[str, int]], spec: ClipSpec) -> float:
    start = time.perf_counter()
    for path, seed in clips:
        decode_clip(path, num_frames=spec.num_frames, stride=spec.stride, size=spec.size,
                    rng=np.random.default_rng(seed), threads=1)
    return len(clips) / (time.perf_counter() - start)


def consume(batches: Iterator[dict[str, Any]], n: int, key: str, delay_s: float = 0.0
            ) -> tuple[float, float, tuple[int, ...]]:
    """(clips/s from the first batch to the n-th clip: the steady state, nan when the first batch held all n;
    seconds to the first batch; clip shape). delay_s per batch plays a training step slower than the decoders
    (what backpressure is for)."""
    start = time.perf_counter()
    first_at, first_len, seen, shape = None, 0, 0, ()
    for batch in batches:
        time.sleep(delay_s)
        seen += len(batch[key])
        if first_at is None:
            first_at, first_len, shape = time.perf_counter(), seen, tuple(batch[key].shape[1:])
        if seen >= n:
            break
    end = time.perf_counter()
    if seen < n or first_at is None:
        raise RuntimeError(f"the stream ended after {seen} of {n} clips")
    rate = (seen - first_len) / (end - first_at) if seen > first_len else math.nan
    return rate, first_at - start, shape


def run_pipeline(cfg: Config, records: Sequence[VideoRecord], n: int, delay_s: float = 0.0
                 ) -> tuple[float, float, tuple[int, ...]]:
    ds = pipeline_stream(cfg, records)
    return consume(ds.iter_batches(batch_size=cfg.train.batch_size, batch_format="numpy"), n, "clip", delay_s)


# Worker processes kept beyond the decode slots: Ray Data's and the skip counter's actors, a spare.
WORKER_SLACK = 4


def warm_workers(root: Path, spec: ClipSpec, records: Sequence[VideoRecord], slots: int, decode_cpus: float
                 ) -> None:
    """A worker process for every decode slot, started before anything is timed: two one-span tasks per slot.
    With one per slot, the last slot's process was still missing: Ray Data starts one task, and the others when
    its output is in."""
    from workflows.runtime.streams import _MIN_BLOCK_ROWS  # a batch of this many rows is one span, one task

    rows = 2 * slots * _MIN_BLOCK_ROWS
    run_pipeline(pipeline_config(root, spec, rows, _MIN_BLOCK_ROWS, decode_cpus), records, rows)


def _resize_crop(frames: Any, size: int) -> Any:  # (T, C, H, W) float 0..255 -> (T, size, size, 3) uint8
    """Short side -> size (bilinear, antialiased), centre crop: what vidssl's decode does with swscale."""
    h, w = frames.shape[-2:]
    scale = size / min(h, w)
    frames = F.interpolate(frames, size=(max(size, round(h * scale)), max(size, round(w * scale))),
                           mode="bilinear", antialias=True, align_corners=False)
    top, left = (frames.shape[-2] - size) // 2, (frames.shape[-1] - size) // 2
    return frames[..., top : top + size, left : left + size].permute(0, 2, 3, 1).clamp(0, 255).to(torch.uint8)


class _PtvClip:
    """pytorchvideo hands every frame of the clip's time window as (C, T', H, W) float: keep T at the stride,
    then resize and crop like vidssl's decode."""

    def __init__(self, spec: ClipSpec) -> None:
        self.spec = spec

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        video = sample["video"]
        index = (torch.arange(self.spec.num_frames) * self.spec.stride).clamp(max=max(video.shape[1] - 1, 0))
        return {"clip": _resize_crop(video[:, index].permute(1, 0, 2, 3), self.spec.size), "label": sample["label"]}


def run_pytorchvideo(clips: Sequence[tuple[str, int]], spec: ClipSpec, batch: int, cpus: int
                     ) -> tuple[float, float, tuple[int, ...]]:
    """The same videos, in the same order, one random clip each; pytorchvideo's MultiProcessSampler splits the
    list over the DataLoader workers. It runs in a fresh Python process: the DataLoader forks its workers, and
    forking this Ray driver broke its gRPC connection (the bench hung twice)."""
    job = {"paths": [path for path, _ in clips], "spec": spec.__dict__, "batch": batch, "cpus": cpus}
    done = subprocess.run([sys.executable, "-c", "from bench.data_throughput import pytorchvideo_child as c; c()"],
                          input=json.dumps(job), capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"pytorchvideo contestant failed: {done.stderr[-2000:]}")
    rate, first, shape = json.loads(done.stdout.strip().splitlines()[-1])
    return rate, first, tuple(shape)


def pytorchvideo_child() -> None:
    """The pytorchvideo contestant's process: a job as JSON on stdin, [clips/s, first batch s, shape] out."""
    # here: only this contestant needs pytorchvideo's data API
    from pytorchvideo.data import LabeledVideoDataset, make_clip_sampler

    job = json.loads(sys.stdin.read())
    spec = ClipSpec(**job["spec"])
    dataset = LabeledVideoDataset(
        labeled_video_paths=[(path, {"label": 0}) for path in job["paths"]],
        clip_sampler=make_clip_sampler("random", spec.num_frames * spec.stride / spec.fps),
        video_sampler=torch.utils.data.SequentialSampler,
        transform=_PtvClip(spec),
        decode_audio=False,
        decoder="pyav",
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=job["batch"], num_workers=job["cpus"])
    n = len(job["paths"]) - len(job["paths"]) % job["batch"]
    print(json.dumps(consume(iter(loader), n, "clip")))


def _regroup(frames: dict[str, np.ndarray], *, spec: ClipSpec, starts: dict[str, int]) -> dict[str, np.ndarray]:
    """All frames of one video (read_videos rows) -> the clip at its start, resized and centre-cropped."""
    order = np.argsort(frames["frame_index"])
    path = str(frames["path"][0])
    index = [min(starts.get(path, 0) + i * spec.stride, len(order) - 1) for i in range(spec.num_frames)]
    clip = torch.from_numpy(np.stack([frames["frame"][order[i]] for i in index])).permute(0, 3, 1, 2).float()
    return {"clip": _resize_crop(clip, spec.size).numpy()[None], "path": np.array([path])}


def run_read_videos(records: Sequence[VideoRecord], spec: ClipSpec, n: int, batch: int
                    ) -> tuple[float, float, tuple[int, ...]] | str:
    if importlib.util.find_spec("decord") is None:
        return "skipped: ray.data.read_videos needs decord (pip install decord)"
    # here: the pytorchvideo contestant's process imports this module and runs without Ray
    import ray

    paths = [r.path for r in records[:n]]
    rng = np.random.default_rng(0)
    starts = {p: int(rng.integers(0, 8)) for p in paths}
    ds = ray.data.read_videos(paths, include_paths=True)
    ds = ds.groupby("path").map_groups(_regroup, fn_kwargs={"spec": spec, "starts": starts})
    return consume(ds.iter_batches(batch_size=batch, batch_format="numpy"), min(n, len(paths)), "clip")


READ_VIDEOS_LIMIT_S = 180.0


def with_watchdog(fn: Callable[[], Any], limit_s: float) -> Any:
    """fn() in a daemon thread; a note instead of its result when it runs past limit_s."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["out"] = fn()
        except Exception as err:  # reported, not raised: one contestant failing should not end the bench
            box["out"] = f"failed: {err!r}"[:300]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    return box.get("out", f"did not finish in {limit_s:.0f} s")


# --- memory ----------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    """This process's resident set size (Linux /proc; psutil is not among the dependencies)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemorySampler:
    """Peak driver RSS and object-store bytes, sampled every `every` seconds while in the `with` block."""

    def __init__(self, every: float = 0.25) -> None:
        # here: the pytorchvideo contestant's process imports this module and runs without Ray
        import ray

        self.every = every
        # This Ray instance's GCS: the summary call would refuse to guess when other Ray instances run here.
        self.address = ray.get_runtime_context().gcs_address
        self.peak_rss = self.peak_store = 0
        self._stop = threading.Event()

    def _store_bytes(self) -> int:
        from ray._private.internal_api import memory_summary  # here: as in __init__ (Ray's private API)

        found = re.search(r"Plasma memory usage (\d+) MiB", memory_summary(address=self.address, stats_only=True))
        return int(found.group(1)) * 2**20 if found else 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, _rss_bytes())
            with contextlib.suppress(Exception):  # the summary call can race Ray's start-up/shutdown
                self.peak_store = max(self.peak_store, self._store_bytes())
            self._stop.wait(self.every)

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def memory_run(base: Sequence[VideoRecord], work: Path, n_videos: int, spec: ClipSpec, clips: int, batch: int
               ) -> dict[str, float]:
    root = linked_manifest(base, work / f"linked_{n_videos}", n_videos)
    cfg = pipeline_config(root, spec, clips, batch, decode_cpus=1.0)
    records = load_manifest("csv", root).records
    with MemorySampler() as mem:
        # A consumer at ~30 clips/s, slower than the decoders: without backpressure the store would fill.
        rate, _, _ = run_pipeline(cfg, records, clips, delay_s=batch / 30)
    return {"videos": n_videos, "clips_per_s": rate, "peak_driver_rss_mb": mem.peak_rss / 2**20,
            "peak_object_store_mb": mem.peak_store / 2**20}


def first_batch_seconds(base: Sequence[VideoRecord], work: Path, n_rows: int, spec: ClipSpec, batch: int) -> float:
    """Manifest file read -> first decoded batch, for an n_rows manifest (no scan of the videos first)."""
    root = linked_manifest(base, work / f"linked_{n_rows}", n_rows)
    start = time.perf_counter()
    records = load_manifest("csv", root).records
    cfg = pipeline_config(root, spec, 100_000 * batch, batch, decode_cpus=1.0)
    run_pipeline(cfg, records, batch)
    return time.perf_counter() - start


# --- driver ----------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(rates: dict[str, list[float]], cpus: int) -> dict[str, float]:
    """The two ratios from the per-contestant clips/s of every repeat (medians)."""
    raw, pipe, ptv = (_median(rates.get(k, [])) for k in ("raw", "pipeline", "pytorchvideo"))
    return {"pipeline_vs_raw": pipe / (raw * cpus), "pipeline_vs_pytorchvideo": pipe / ptv}


def timed(label: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = fn()
    print(f"  {label:<14} {time.perf_counter() - start:6.1f} s wall", flush=True)
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="< 60 s: one repeat, no memory / 100k-row runs")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPU processes per contestant")
    parser.add_argument("--clips", type=int, default=None, help="clips per contestant and repeat")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8, help="T")
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--size", type=int, default=112, help="short side after decode (centre-cropped square)")
    parser.add_argument("--video-frames", type=int, default=None, help="frames per generated video")
    parser.add_argument("--video-size", type=int, default=256, help="short side of the generated videos")
    parser.add_argument("--memory-videos", default="200,2000,20000", help="manifest sizes for the memory runs")
    parser.add_argument("--start-rows", type=int, default=100_000, help="manifest rows for the first-batch time")
    parser.add_argument("--work", type=Path, default=OUT / "data_throughput")
    args = parser.parse_args(argv)
    # As many clips in --quick (short videos, one repeat): with fewer, the tail of the stream, where some decode
    # slots have no task left, weighs more (256 clips: 0.64-0.79 of raw; 640: 0.77-0.79; the full run 0.83-0.90).
    clips = args.clips or 960
    repeats = args.repeats or (1 if args.quick else 2)
    video_frames = args.video_frames or (48 if args.quick else 160)  # 160 frames = 10 s at 16 fps
    spec = ClipSpec(args.frames, args.stride, args.size, fps=16)

    # here: the pytorchvideo contestant's process imports this module and runs without Ray
    import ray

    wall = time.perf_counter()
    base = make_videos(args.work / "videos", classes=4, per_class=3 if args.quick else 16, frames=video_frames,
                       side=args.video_size, fps=spec.fps)
    decode_cpus = DataConfig().decode_cpus
    slots = math.ceil(args.cpus / decode_cpus)
    # Ray keeps num_cpus idle worker processes and ends the others after 1 s idle: the default's two decode
    # tasks per core lost half their processes while raw or pytorchvideo ran, and their restart (~2 s of CPU
    # each here) fell inside the next timed stream (--quick: 0.72-0.77 of raw). Processes start once per
    # training run; raw's process and pytorchvideo's forked workers are warm when their rates are taken.
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _system_config={"num_workers_soft_limit": slots + WORKER_SLACK})
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = pipeline_config(args.work / "videos", spec, clips, args.batch, decode_cpus=decode_cpus)
    clip_list = the_clips(cfg, base, clips)
    print(f"{len(base)} videos of {video_frames} frames, short side {args.video_size}, a keyframe each second; "
          f"clips of {spec.num_frames} x {spec.size}^2 at stride {spec.stride}; {args.cpus} CPU processes; "
          f"{clips} clips x {repeats} repeats")

    timed("warm-up", lambda: warm_workers(args.work / "videos", spec, base, slots, decode_cpus))
    cfg_one = pipeline_config(args.work / "videos", spec, clips, args.batch, decode_cpus=1.0)
    names = ["raw", "pipeline", "pytorchvideo", *([] if args.quick else ["pipeline_1cpu"]), "read_videos"]
    rates: dict[str, list[float]] = {name: [] for name in names}
    first: dict[str, list[float]] = {k: [] for k in rates}
    notes: dict[str, str] = {}
    for r in range(repeats):
        print(f"repeat {r + 1}/{repeats}", flush=True)
        rates["raw"].append(timed("raw", lambda: run_raw(clip_list, spec)))
        contestants = [
            ("pipeline", lambda: run_pipeline(cfg, base, clips)),
            ("pytorchvideo", lambda: run_pytorchvideo(clip_list, spec, args.batch, args.cpus)),
        ]
        if not args.quick:  # not in the ratios: one decode task per CPU, no task to fill another's gaps
            contestants.append(("pipeline_1cpu", lambda: run_pipeline(cfg_one, base, clips)))
        for name, fn in contestants:
            out = timed(name, fn)
            if isinstance(out, str):
                notes[name] = out
                continue
            rate, to_first, shape = out
            assert shape == (spec.num_frames, spec.size, spec.size, 3), f"{name} made clips of shape {shape}"
            rates[name].append(rate)
            first[name].append(to_first)

    # Once, last: every frame of every video becomes a row and is shuffled by path (a few videos say enough),
    # and that all-to-all once hung here; a watchdog keeps the rest of the bench going.
    out = timed("read_videos", lambda: with_watchdog(
        lambda: run_read_videos(base, spec, 4 if args.quick else 16, args.batch), READ_VIDEOS_LIMIT_S))
    if isinstance(out, str):
        notes["read_videos"] = out
    else:
        rates["read_videos"].append(out[0])
        first["read_videos"].append(out[1])

    print(f"\n{'contestant':<14} {'clips/s':>9} {'per CPU':>9} {'1st batch s':>12}")
    for name, values in rates.items():
        if not values:
            print(f"{name:<14} {notes.get(name, 'no result')}")
            continue
        per_cpu = _median(values) / (1 if name == "raw" else args.cpus)
        print(f"{name:<14} {_median(values):9.1f} {per_cpu:9.1f} {_median(first[name]) if first[name] else 0:12.2f}")
    result: dict[str, Any] = {"rates": rates, "first_batch_s": first, "notes": notes, "cpus": args.cpus,
                              "clips": clips, "repeats": repeats, "spec": spec.__dict__,
                              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}

    if not args.quick:
        sizes = [int(s) for s in args.memory_videos.split(",")]
        memory = [timed(f"memory {n}", lambda n=n: memory_run(base, args.work, n, spec, clips // 2, args.batch))
                  for n in sizes]
        print(f"\n{'videos':>8} {'clips/s':>9} {'peak driver RSS MB':>19} {'peak object store MB':>21}")
        for m in memory:
            print(f"{m['videos']:8d} {m['clips_per_s']:9.1f} {m['peak_driver_rss_mb']:19.0f} "
                  f"{m['peak_object_store_mb']:21.0f}")
        start_s = timed("first batch", lambda: first_batch_seconds(base, args.work, args.start_rows, spec,
                                                                   args.batch))
        print(f"\n{args.start_rows}-row manifest: {start_s:.1f} s from reading the manifest to the first batch")
        result.update(memory=memory, start_rows=args.start_rows, first_batch_s_large_manifest=start_s)

    ratios = summarise(rates, args.cpus)
    result.update(ratios, wall_s=time.perf_counter() - wall)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "data_throughput.json").write_text(json.dumps(result, indent=2))
    print(f"\nwall {result['wall_s']:.0f} s; results in {OUT / 'data_throughput.json'}")
    print(f"pipeline_vs_raw={ratios['pipeline_vs_raw']:.2f} "
          f"pipeline_vs_pytorchvideo={ratios['pipeline_vs_pytorchvideo']:.2f}")


if __name__ == "__main__":
    main()
