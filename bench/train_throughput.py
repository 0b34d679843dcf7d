"""Training-step throughput: the Ray Train worker loop vs a plain PyTorch loop on the same step.

    python -m bench.train_throughput --quick          # small3d pair only, < 90 s on 2 CPU cores
    python -m bench.train_throughput                  # small3d pair + r3d_50 pair, ~10 min on 2 CPU cores
    python -m bench.train_throughput --models r3d_50,r3d_50_w0.25 --frames 8 --size 128 --crop 112 \
        --batch 2 --mu 1 --device cuda                # any pair, any shape (repeat --models for several pairs)

Contestants, on the SAME CMPL step (ssl_core.train_step.make_batches + optimize), Config, model pair, batch, mu,
clip shape, torch threads and device:
  plain  this process: models from build_models, batches already stacked in memory, a for loop;
  ray    workflows.runtime.train_worker.train_loop_per_worker in a real ray.train.torch.TorchTrainer (1 worker), fed by
         Ray Data datasets (ray.data.from_items) holding the same uint8 clips, logging to a throwaway MLflow
         store (SQLite in a temporary directory).
Both read pre-made in-memory clips, so video decode is out of the comparison: what is measured is the step
plus what the Ray loop adds around it (shard iteration, iter_torch_batches collation, the per-window
all_reduce of metrics).

Windows: both count the same log windows of `log_every` steps. The Ray numbers are the loop's own
`perf/clips_per_s`, read back from MLflow; the first window (model warm-up, first-call costs) is dropped by
both. The loop's timer covers the steps of a window and the metric all_reduce, not the MLflow write,
`ray.train.report` and eval that follow it; to show those too, `ray wall` is the rate from the MLflow
timestamps of consecutive windows (everything the worker does per window). See run_ray() for how eval and
the checkpoint are kept out of the timed windows.

Order: plain, ray, plain, ray, ..., plain (`--repeats` Ray fits, one more plain run): each fit is compared
with the mean of the plain runs just before and after it, which cancels a drift of the shared machine's
load. A pair's ratio is the median of those per-fit ratios (min-max shown); plain and ray clips/s are the
medians of their runs. The last line, `ray_vs_plain=<ratio>`, is the WORST (lowest) pair's median ratio
(in --quick the only pair); the target is >= 0.9. Results also go to bench/out/train_throughput.json.

A third, load-independent view: clips per CPU-second of the training process (plain: this process's CPU
time over the timed windows; ray: the RayTrainWorker process, all threads, sampled from /proc, between the
same window ends as `ray wall`, so it includes the per-window MLflow write and report). On the shared
2-core machine other users' load moves clips/s by +-30% within a minute and is what moves `ratio` most; the
CPU view shows whether the Ray loop adds work per step. Each run also prints how busy the whole machine was.
Measured here (2026-11-23, load average 3-11 from other users): the worker's training thread was blocked
(data, all_reduce) ~1% of the timed windows' wall time; its losses were time waiting for a CPU (14-45%
against 6-14% for plain), and Ray's helper processes (split coordinators, controller) used ~0.05 cores.

Fixed costs are left out on purpose and printed per fit: Ray start (~10 s here), a TorchTrainer's start-up
(controller, worker and data actors: 30-50 s on this loaded 2-core machine) and its end (final eval,
checkpoint).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

OUT = Path("bench/out")
DEMO_CONFIG = Path("configs/demo.yaml")
NUM_CLASSES = 8  # the demo's synthetic class count; the step's cost barely depends on it
TARGET = 0.9


@dataclass(frozen=True)
class Case:
    """One model pair at one shape: what both contestants train."""

    primary: str
    auxiliary: str
    batch: int  # labeled clips per step; the unlabeled batch is batch * mu
    mu: int
    frames: int  # T of the stored uint8 clips
    size: int  # H = W of the stored uint8 clips (the decode side's output)
    crop: int  # augment.crop_size: model input side
    log_every: int  # steps per timed window
    windows: int  # timed windows per run (after one warm-up window)
    note: str = ""

    @property
    def clips_per_step(self) -> int:
        return self.batch * (1 + self.mu)

    @property
    def iterations(self) -> int:
        return iterations_for(self.log_every, self.windows)

    @property
    def label(self) -> str:
        return f"{self.primary} + {self.auxiliary}"

    @property
    def shape(self) -> str:
        return (f"batch {self.batch} mu {self.mu}, clips {self.frames}x{self.size}^2 -> crop {self.crop}^2, "
                f"{self.windows}x{self.log_every} timed steps")


# Default shapes per pair. small3d: the demo's clip shape and batch (configs/demo.yaml). r3d_50 is ~50x the
# work of small3d per clip: at the demo's 8 x 72^2 clips (64^2 crop), batch 2, mu 1, one step takes ~3 s on
# one CPU thread, so the full run stays under ~10 min; its real shape (8 x 224^2, batch 8+) needs a GPU.
PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("small3d", "small3d_w0.5"): {"batch": 8, "mu": 2, "frames": 8, "size": 72, "crop": 64, "log_every": 10,
                                  "windows": 3, "note": "demo shape (configs/demo.yaml)"},
    ("r3d_50", "r3d_50_w0.25"): {"batch": 2, "mu": 1, "frames": 8, "size": 72, "crop": 64, "log_every": 2,
                                 "windows": 2, "note": "CPU-feasible shape, not the paper's (8x224^2)"},
}
QUICK = {"log_every": 4, "windows": 2}


def iterations_for(log_every: int, windows: int) -> int:
    """Warm-up window + timed windows + ONE extra step: the final window (which ends in the last-step eval
    and checkpoint) is then a 1-step window that is never timed, whatever the loop does at its last step."""
    return log_every * (1 + windows) + 1


@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.median:7.2f} ({self.low:.2f}-{self.high:.2f})"


def summarize(values: Sequence[float]) -> Stat:
    if not values:
        raise ValueError("no values to summarize")
    return Stat(statistics.median(values), min(values), max(values))


def aggregate_rate(window_rates: Sequence[float]) -> float:
    """Clips/s over several windows of EQUAL clip counts: total clips / total time = harmonic mean of rates."""
    if not window_rates or min(window_rates) <= 0:
        raise ValueError(f"window rates must be positive and non-empty, got {list(window_rates)}")
    return statistics.harmonic_mean(window_rates)


def timed_windows(history: Sequence[tuple[int, float]], log_every: int, iterations: int) -> list[float]:
    """The loop's per-window rates (step, clips/s) minus the warm-up window (step == log_every) and the final
    1-step window (step == iterations); the rest must be full windows of log_every steps."""
    kept = [value for step, value in sorted(history) if log_every < step < iterations]
    steps = [step for step, _ in sorted(history) if log_every < step < iterations]
    if steps != list(range(2 * log_every, iterations, log_every)):
        raise ValueError(f"unexpected log windows at steps {steps} (log_every {log_every}, iterations {iterations})")
    return kept


def wall_rate(timestamps_ms: Sequence[int], clips_per_window: int) -> float:
    """Clips/s between the first and the last of consecutive window timestamps (each taken as the window's
    metrics are logged): steps plus everything the worker does per window (MLflow write, report)."""
    span_s = (timestamps_ms[-1] - timestamps_ms[0]) / 1000
    if len(timestamps_ms) < 2 or span_s <= 0:
        raise ValueError(f"need two increasing timestamps, got {list(timestamps_ms)}")
    return (len(timestamps_ms) - 1) * clips_per_window / span_s


def schedule(repeats: int) -> list[str]:
    """plain, ray, plain, ray, ..., plain: every Ray fit sits between two plain runs. A plain run is cheap next
    to a fit (no Ray start-up), and the sandwich cancels a linear drift of the shared machine's load."""
    return ["plain", "ray"] * repeats + ["plain"]


def sandwich_ratios(plain: Sequence[float], ray: Sequence[float]) -> list[float]:
    """ray_i / mean(plain_i, plain_i+1): each fit against the plain runs just before and after it."""
    if not ray or len(plain) != len(ray) + 1:
        raise ValueError(f"need n >= 1 ray runs and n + 1 plain runs, got {len(ray)} and {len(plain)}")
    return [r / ((plain[i] + plain[i + 1]) / 2) for i, r in enumerate(ray)]


def headline(ratios_by_pair: dict[str, Stat]) -> float:
    """The last line's number: the worst (lowest) median ratio over the pairs measured."""
    if not ratios_by_pair:
        raise ValueError("no pairs measured")
    return min(stat.median for stat in ratios_by_pair.values())


# --- the contestants --------------------------------------------------------------------------------------


def make_config(case: Case, device: str, threads: int) -> Any:
    # here: torch, Ray and MLflow take seconds to load; the unit tests import this module for its arithmetic
    from ssl_core.config import load_config

    overrides = [
        f"model.primary={case.primary}", f"model.auxiliary={case.auxiliary}",
        f"train.batch_size={case.batch}", f"train.mu={case.mu}",
        f"data.num_frames={case.frames}", f"data.size={case.size}", f"augment.crop_size={case.crop}",
        f"train.iterations={case.iterations}", f"train.log_every={case.log_every}",
        # Eval and checkpoint only at the last step (they cannot be switched off): see iterations_for().
        f"train.eval_every={case.iterations}", f"train.checkpoint_every={case.iterations}",
        "train.keep_checkpoints=1", f"scaling.torch_threads={threads}", "scaling.num_workers=1",
        f"scaling.use_gpu={str(device == 'cuda').lower()}",
        # The decode side is out of the comparison (no decode tasks run); the worker keeps the demo's 1 CPU.
        "data.synthetic.enabled=false",
    ]
    return load_config(DEMO_CONFIG, overrides)


@dataclass
class Clips:
    """The pre-made uint8 clips both contestants read, row by row in the same order."""

    labeled: np.ndarray  # (N_l, T, H, W, 3) uint8, N_l = (iterations + 1) * batch
    labels: np.ndarray  # (N_l,) int64
    unlabeled: np.ndarray  # (N_u, T, H, W, 3) uint8, N_u = (iterations + 1) * batch * mu
    true_labels: np.ndarray  # (N_u,) int64
    eval_clips: np.ndarray  # (E, N, T, H, W, 3) uint8: a tiny eval split (E videos, N clips each)
    eval_labels: np.ndarray  # (E,) int64


def make_clips(case: Case, eval_clips: int, seed: int = 0) -> Clips:
    """Random clips (content does not change the step's cost). Sized like workflows.runtime.streams.build_datasets:
    one pass holds iterations + 1 batches, so the Ray shards never start a second pass mid-run."""
    rng = np.random.default_rng(seed)
    steps = case.iterations + 1
    shape = (case.frames, case.size, case.size, 3)
    n_l, n_u = steps * case.batch, steps * case.batch * case.mu
    return Clips(
        labeled=rng.integers(0, 256, (n_l, *shape), dtype=np.uint8),
        labels=rng.integers(0, NUM_CLASSES, n_l, dtype=np.int64),
        unlabeled=rng.integers(0, 256, (n_u, *shape), dtype=np.uint8),
        true_labels=rng.integers(0, NUM_CLASSES, n_u, dtype=np.int64),
        eval_clips=rng.integers(0, 256, (2, eval_clips, *shape), dtype=np.uint8),
        eval_labels=rng.integers(0, NUM_CLASSES, 2, dtype=np.int64),
    )


def run_plain(case: Case, cfg: Any, clips: Clips, device: str) -> tuple[float, float]:
    """Clips/s of the timed windows of a plain loop: same models, optimizer, schedule, seed and batches as
    the Ray worker; batches are stacked tensors before the clock starts (the ideal feed)."""
    # here: torch, Ray and MLflow take seconds to load; the unit tests import this module for its arithmetic
    import torch

    from ssl_core.algorithms import get_algorithm
    from ssl_core.schedule import build_scheduler
    from ssl_core.train_step import build_models, build_optimizer, make_batches, optimize

    t = cfg.train
    torch.set_num_threads(cfg.scaling.torch_threads)  # what train_loop_per_worker does in its worker
    torch.manual_seed(t.seed * 1000)  # rank 0's seed in the worker
    dev = torch.device(device)
    models = {role: m.to(dev) for role, m in build_models(cfg, NUM_CLASSES).items()}
    optimizer = build_optimizer(cfg, models)
    scheduler = build_scheduler(optimizer, warmup=t.warmup_iters, total=t.iterations)
    algorithm = get_algorithm(cfg.algorithm.name)(models, cfg.algorithm.resolved_params())
    b, u = t.batch_size, t.batch_size * t.mu
    batches = [
        (torch.from_numpy(clips.labeled[i * b:(i + 1) * b]), torch.from_numpy(clips.labels[i * b:(i + 1) * b]),
         torch.from_numpy(clips.unlabeled[i * u:(i + 1) * u]), torch.from_numpy(clips.true_labels[i * u:(i + 1) * u]))
        for i in range(case.log_every * (1 + case.windows))
    ]
    rates, cpu_s = [], []
    start, cpu_start = time.perf_counter(), time.process_time()
    for step, (lb, y, ub, truth) in enumerate(batches):
        labeled, unlabeled = make_batches(lb, y, ub, truth, cfg.augment, dev)
        optimize(algorithm, optimizer, scheduler, labeled, unlabeled, grad_clip=t.grad_clip)
        if (step + 1) % case.log_every == 0:
            if dev.type == "cuda":
                torch.cuda.synchronize()  # optimize() already syncs on its float() metrics; be explicit
            now, cpu_now = time.perf_counter(), time.process_time()
            rates.append(case.log_every * case.clips_per_step / (now - start))
            cpu_s.append(cpu_now - cpu_start)
            start, cpu_start = now, cpu_now
    # The first window is the warm-up, as for the Ray loop. Second number: clips per CPU-second of this process.
    return aggregate_rate(rates[1:]), case.windows * case.log_every * case.clips_per_step / sum(cpu_s[1:])


class WorkerCPU(threading.Thread):
    """CPU seconds (all threads) of this bench's RayTrainWorker process, sampled from /proc every 0.2 s.

    Why: on the shared 2-core machine other users' load moves clips/s by +-30% within a minute; CPU time
    spent per clip does not depend on how often the scheduler lets the process run, so clips per CPU-second,
    ray vs plain, shows whether the Ray loop adds WORK per step (data iteration, collation, all_reduce,
    logging threads) independently of that noise. Linux only; nan elsewhere."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = False
        self.samples: list[tuple[float, float]] = []  # (time.time(), CPU seconds)
        self.pid: int | None = None

    def run(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        while not self.stop:
            try:
                self.pid = self.pid or self._find_worker()
                if self.pid is not None:
                    fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
                    self.samples.append((time.time(), (int(fields[11]) + int(fields[12])) / tick))
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.2)

    @staticmethod
    def _find_worker() -> int | None:
        """The RayTrainWorker process that descends from this process (other users may run Ray too)."""
        me = os.getpid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if not (entry / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                    continue
                pid = int(entry.name)
                while pid > 1:
                    if pid == me:
                        return int(entry.name)
                    pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
        return None

    def cpu_at(self, t: float) -> float:
        """CPU seconds at time t, interpolated between samples (nan without samples around t)."""
        for (t0, c0), (t1, c1) in itertools.pairwise(self.samples):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)
        return float("nan")


@dataclass
class RayResult:
    window: float  # the loop's own perf/clips_per_s over the timed windows
    wall: float  # from the MLflow timestamps: steps + per-window logging and report
    cpu: float  # clips per CPU-second of the RayTrainWorker process (all its threads) over the timed windows
    startup_s: float  # fit() start -> the warm-up window logged (worker start, imports, models, warm-up steps)
    teardown_s: float  # last window logged -> fit() returned (final eval, checkpoint, shutdown)


def datasets_for(clips: Clips, case: Case) -> dict[str, Any]:
    """The columns train_loop_per_worker reads (workflows/runtime/streams.py): labeled {clip, label}, unlabeled
    {clip, true_label}, eval {clips, label}; one block per batch, as build_datasets' streams have."""
    # here: torch, Ray and MLflow take seconds to load; the unit tests import this module for its arithmetic
    import ray.data

    def rows(x: np.ndarray, y: np.ndarray, clip_key: str, label_key: str) -> list[dict[str, Any]]:
        return [{clip_key: x[i], label_key: int(y[i])} for i in range(len(y))]

    unl_batch = case.batch * case.mu
    return {
        "labeled": ray.data.from_items(rows(clips.labeled, clips.labels, "clip", "label"),
                                       override_num_blocks=len(clips.labels) // case.batch),
        "unlabeled": ray.data.from_items(rows(clips.unlabeled, clips.true_labels, "clip", "true_label"),
                                         override_num_blocks=len(clips.true_labels) // unl_batch),
        "eval": ray.data.from_items(rows(clips.eval_clips, clips.eval_labels, "clips", "label")),
    }


def run_ray(case: Case, cfg: Any, datasets: dict[str, Any], tracking_uri: str, storage: Path, name: str,
            device: str) -> RayResult:
    """One TorchTrainer fit of train_loop_per_worker; its clips/s read back from MLflow.

    Fairness: eval and checkpoint happen only at the last step (eval_every = checkpoint_every = iterations),
    and the last window is a single extra step that is never used (iterations_for), so neither eval nor the
    checkpoint write can fall in a timed window; the warm-up window is dropped as in the plain loop."""
    # here: torch, Ray and MLflow take seconds to load; the unit tests import this module for its arithmetic
    import ray
    import ray.train
    from mlflow import MlflowClient
    from ray.train.torch import TorchTrainer

    from workflows.runtime.streams import SkipCounter
    from workflows.runtime.train_worker import train_loop_per_worker
    from workflows.runtime.worker_args import WorkerArgs
    from workflows.tracking.tracker import Tracker

    tracker = Tracker.start(tracking_uri, "bench-train-throughput", name, {"vidssl.bench": "train_throughput"})
    s = cfg.scaling
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=WorkerArgs(cfg.to_dict(), [f"class{i}" for i in range(NUM_CLASSES)], tracking_uri,
                                     tracker.run_id, SkipCounter.remote()).loop_config(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=1, use_gpu=device == "cuda", resources_per_worker={"CPU": s.cpus_per_worker}
        ),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(storage),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=0),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["labeled", "unlabeled"]),
    )
    sampler = WorkerCPU()
    sampler.start()
    fit_start = time.time()
    try:
        trainer.fit()
    finally:
        sampler.stop = True
    fit_end = time.time()
    tracker.finish()
    history = MlflowClient(tracking_uri).get_metric_history(tracker.run_id, "perf/clips_per_s")
    rates = timed_windows([(m.step, m.value) for m in history], case.log_every, case.iterations)
    # Timestamps of the warm-up window's end through the last timed window's end.
    stamps = [m.timestamp for m in sorted(history, key=lambda m: m.step)
              if case.log_every <= m.step < case.iterations]
    first, last = min(m.timestamp for m in history) / 1000, max(m.timestamp for m in history) / 1000
    worker_cpu_s = sampler.cpu_at(stamps[-1] / 1000) - sampler.cpu_at(stamps[0] / 1000)
    clips = (len(stamps) - 1) * case.log_every * case.clips_per_step
    return RayResult(window=aggregate_rate(rates), wall=wall_rate(stamps, case.log_every * case.clips_per_step),
                     cpu=clips / worker_cpu_s if worker_cpu_s > 0 else float("nan"),
                     startup_s=first - fit_start, teardown_s=fit_end - last)


# --- the driver -------------------------------------------------------------------------------------------


def busy_cores() -> tuple[float, float]:
    """(seconds, busy CPU-seconds of the whole machine) from /proc/stat, to show how loaded the shared machine
    was during a run (other users' load is what moves these numbers most; (0, 0) where /proc is missing)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return time.time(), (sum(fields) - fields[3] - fields[4]) / tick  # minus idle and iowait


def build_cases(pairs: Sequence[str], quick: bool, overrides: dict[str, int | None]) -> list[Case]:
    cases = []
    for pair in pairs:
        names = tuple(n.strip() for n in pair.split(","))
        if len(names) != 2 or not all(names):
            raise SystemExit(f"--models wants PRIMARY,AUXILIARY, got {pair!r}")
        preset = dict(PRESETS.get(names, PRESETS[("small3d", "small3d_w0.5")]))
        if names not in PRESETS:
            preset["note"] = "demo shape (no preset for this pair)"
        if quick:
            preset.update(QUICK)
        given = {k: v for k, v in overrides.items() if v is not None}
        if given:
            preset.update(given)
            preset["note"] = "shape set on the command line"
        cases.append(Case(names[0], names[1], **preset))
    return cases


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small3d pair, 2x4 timed steps, 1 fit (< 90 s)")
    parser.add_argument("--models", action="append", metavar="PRIMARY,AUXILIARY",
                        help="a model pair (repeatable); default: small3d,small3d_w0.5 and r3d_50,r3d_50_w0.25")
    parser.add_argument("--batch", type=int, help="labeled clips per step (default: per pair preset)")
    parser.add_argument("--mu", type=int, help="unlabeled/labeled batch ratio")
    parser.add_argument("--frames", type=int, help="frames per clip")
    parser.add_argument("--size", type=int, help="side of the stored clips")
    parser.add_argument("--crop", type=int, help="augment.crop_size (model input side; <= --size)")
    parser.add_argument("--log-every", type=int, help="steps per timed window")
    parser.add_argument("--steps", type=int, help="timed steps per run (rounded up to whole windows)")
    parser.add_argument("--repeats", type=int,
                        help="Ray fits per pair, each between two plain runs (default 3, --quick 1)")
    parser.add_argument("--threads", type=int, help="torch threads of both (default: the demo's scaling.torch_threads)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    wall_start = time.perf_counter()
    # here: torch, Ray and MLflow take seconds to load; the unit tests import this module for its arithmetic
    import ray
    import torch

    from ssl_core.config import load_config

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device here", file=sys.stderr)
        return 2
    pairs = args.models or (["small3d,small3d_w0.5"] if args.quick else ["small3d,small3d_w0.5", "r3d_50,r3d_50_w0.25"])
    cases = build_cases(pairs, args.quick, {"batch": args.batch, "mu": args.mu, "frames": args.frames,
                                            "size": args.size, "crop": args.crop, "log_every": args.log_every})
    if args.steps is not None:
        cases = [Case(**{**asdict(c), "windows": max(1, -(-args.steps // c.log_every))}) for c in cases]
    repeats = args.repeats or (1 if args.quick else 3)
    threads = args.threads or load_config(DEMO_CONFIG).scaling.torch_threads

    # As workflows.train.init_ray, but the worker's console lines are not forwarded (the bench prints its own
    # table; a fit's exception still reaches fit()).
    # No dashboard: ~10 more processes starting on a 2-core machine, and noise for both contestants.
    ray.init(logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vidssl-bench-") as tmp:
        tracking_uri = f"sqlite:///{tmp}/mlflow.db"
        for case in cases:
            cfg = make_config(case, args.device, threads)
            clips = make_clips(case, cfg.data.eval_clips)
            datasets = datasets_for(clips, case)
            runs: dict[str, list[float]] = {"plain": [], "ray": [], "ray_wall": [], "plain_cpu": [], "ray_cpu": []}
            print(f"\n{case.label}: {case.shape} ({case.note})", flush=True)
            for i, who in enumerate(schedule(repeats)):
                t0 = time.perf_counter()
                load0 = busy_cores()
                if who == "plain":
                    rate, cpu = run_plain(case, cfg, clips, args.device)
                    runs["plain"].append(rate)
                    runs["plain_cpu"].append(cpu)
                    shown = f"{rate:.2f} clips/s ({cpu:.1f} per CPU-s)"
                else:
                    name = f"{case.primary}-{i}"
                    got = run_ray(case, cfg, datasets, tracking_uri, Path(tmp) / "ray", name, args.device)
                    runs["ray"].append(got.window)
                    runs["ray_wall"].append(got.wall)
                    runs["ray_cpu"].append(got.cpu)
                    shown = (f"{got.window:.2f} clips/s ({got.cpu:.1f} per CPU-s; wall {got.wall:.2f}; "
                             f"fit start -> first window {got.startup_s:.0f} s, "
                             f"last window -> fit end {got.teardown_s:.0f} s)")
                load1 = busy_cores()
                busy = (load1[1] - load0[1]) / max(load1[0] - load0[0], 1e-9)
                print(f"  {i + 1:>2}. {who:<5} {shown}  [{time.perf_counter() - t0:.0f} s, machine busy {busy:.2f} of "
                      f"{os.cpu_count()} cores]", flush=True)
            results.append({
                "case": asdict(case), "runs": runs,
                "plain": asdict(summarize(runs["plain"])), "ray": asdict(summarize(runs["ray"])),
                "ray_wall": asdict(summarize(runs["ray_wall"])),
                "ratio": asdict(summarize(sandwich_ratios(runs["plain"], runs["ray"]))),
                "wall_ratio": asdict(summarize(sandwich_ratios(runs["plain"], runs["ray_wall"]))),
                "cpu_ratio": asdict(summarize(sandwich_ratios(runs["plain_cpu"], runs["ray_cpu"]))),
            })
            del datasets, clips
    ray.shutdown()

    machine = {"cpus": os.cpu_count(), "torch_threads": threads, "device": args.device,
               "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
               "platform": platform.platform(), "torch": torch.__version__, "ray": ray.__version__}
    print(f"\nmachine: {machine['cpus']} CPUs, torch threads {threads} (both contestants), device {args.device}"
          + (f" ({machine['gpu']})" if machine["gpu"] else "")
          + f"; {repeats} Ray fit(s) per pair between {repeats + 1} plain runs; median (min-max)")
    print(f"{'model pair':<28} {'plain clips/s':>22} {'ray clips/s':>22} {'ratio':>22} {'ray wall':>22} "
          f"{'wall ratio':>22} {'per-CPU-s ratio':>22}")
    for r in results:
        case = r["case"]
        cells = [Stat(**r[k]) for k in ("plain", "ray", "ratio", "ray_wall", "wall_ratio", "cpu_ratio")]
        print(f"{case['primary'] + ' + ' + case['auxiliary']:<28} " + " ".join(f"{str(c):>22}" for c in cells))
        print(f"{'':<28} {Case(**case).shape} ({case['note']})")
    ratio = headline({f"{r['case']['primary']},{r['case']['auxiliary']}": Stat(**r["ratio"]) for r in results})
    wall_s = time.perf_counter() - wall_start
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / "train_throughput.json"
    command = "python -m bench.train_throughput " + " ".join(sys.argv[1:] if argv is None else argv)
    out.write_text(json.dumps({"command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                               "machine": machine, "repeats": repeats, "results": results,
                               "ray_vs_plain": ratio,
                               "ray_vs_plain_means": "worst pair's median ray/plain (window timer)",
                               "target": TARGET, "wall_s": wall_s}, indent=2))
    print(f"ratio = ray/plain of the loop's own window timer; wall = from MLflow timestamps (adds per-window "
          f"logging + report); per-CPU-s = clips per CPU-second of the training process (load-independent).\n"
          f"Last line: the worst pair's ratio (target >= {TARGET}). {wall_s:.0f} s; wrote {out}")
    print(f"ray_vs_plain={ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
