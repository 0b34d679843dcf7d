"""The Ray-free training runner: clips decoded by threads of this process, the same step, evaluation and
checkpoints as the Ray Train worker, over the same step loop (ssl_core.engine); no Ray, no MLflow. A baseline
for benchmarks, a way to check that a dataset is learnable, and a way to train on one GPU machine:

    python -m ssl_core.loop --config configs/demo.yaml --set algorithm.name=supervised \
        --set data.labeled_fraction=1.0 --set train.iterations=300
    python -m ssl_core.loop --config configs/demo.yaml --set train.iterations=600 --resume latest

Checkpoints go to `<output.storage>/<run name>/checkpoint_<step>/` in ssl_core.checkpoint's format
(train.checkpoint_every, train.keep_checkpoints); `--resume latest|<checkpoint or run folder>` continues one.
A problem with the config or the data is one line `error: ...` and exit status 2 (ssl_core/user_errors.py), before
training where it can be known then (a split the algorithm cannot train on); a new run that fails before its first
checkpoint leaves no run folder.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from ssl_core import allocator
from ssl_core.algorithms import get_algorithm
from ssl_core.checkpoint import (
    CheckpointError,
    keep_newest_checkpoints,
    latest_checkpoint_dir,
    load_checkpoint_model,
    load_training_state,
    model_meta,
    newest_step_checkpoint,
    restore_training_state,
    save_training_state,
    step_checkpoint_dir,
)
from ssl_core.config import Config, ConfigError, dump_yaml, load_config
from ssl_core.data.decode_base import DecodeError
from ssl_core.engine import Hooks, Report, Schedule, run
from ssl_core.evaluate import EvalCounts, PreciseBN, video_probs
from ssl_core.param_groups import base_lr
from ssl_core.run_folder import claim_run_dir, discarded_on_failure, stamped
from ssl_core.schedule import build_scheduler
from ssl_core.train_step import (
    build_models,
    build_optimizer,
    freeze,
    held_backbones,
    init_models,
    input_memory_format,
    make_batches,
    model_names,
    optimize,
    place_models,
)
from ssl_core.user_errors import UnreadableVideos, reports_user_errors, skipped_videos_line, unreadable_split

if TYPE_CHECKING:  # both import PyAV, which bench.gpu_step's machines do without
    from ssl_core.data.clip_cache import ClipCache
    from ssl_core.data.manifest import VideoRecord



T = TypeVar("T")


def prefetched(
    pool: ThreadPoolExecutor, decode: Callable[..., T | None], tasks: Iterator[tuple[Any, ...]], batch: int, *,
    patience: int, give_up: Callable[[], Exception],
) -> Iterator[list[T]]:
    """Endless lists of `batch` decoded items, `decode(*task)` run by `pool`'s threads two batches ahead so
    decoding overlaps the training step (PyAV releases the GIL); a None (an unreadable video) is skipped.
    `patience` Nones in a row raise `give_up()` instead of waiting forever for a video that decodes: callers pass
    twice the number of videos their tasks cycle through, as any run of that many tasks spans one whole pass."""
    ahead: deque[Future[T | None]] = deque()
    items: list[T] = []
    misses = 0
    while True:
        while len(ahead) < 2 * batch:
            ahead.append(pool.submit(decode, *next(tasks)))
        decoded = ahead.popleft().result()
        if decoded is None:
            misses += 1
            if misses >= patience:
                raise give_up()
            continue
        misses = 0
        items.append(decoded)
        if len(items) == batch:
            yield items
            items = []


def _clip_batches(
    records: Sequence[VideoRecord], batch: int, cfg: Config, seed: int, pool: ThreadPoolExecutor,
    cache: ClipCache | None = None, skipped: dict[str, str] | None = None, what: str = "train split",
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless in-process batches of decoded clips (records reshuffled each pass), decoded by `pool`'s
    threads two batches ahead, so decoding overlaps the training step (PyAV releases the GIL).
    With a `cache` (data.cache) the same clips are sliced from it instead of decoded. `skipped` receives
    the path and reason of each unreadable video (data/skipped_videos); when none of `records` decodes, the
    iterator raises UnreadableVideos naming `what`."""
    # Here, not at the top: the step's half of this module runs where PyAV is absent (bench.gpu_step on a GPU
    # machine).
    from ssl_core.data.decode import decode_clip

    rng = np.random.default_rng(seed)
    d = cfg.data
    read_clip = cache.decode_clip if cache is not None else decode_clip
    skipped = skipped if skipped is not None else {}
    if not records:  # an endless pass over no video would spin without yielding
        raise UnreadableVideos(f"the {what} holds no videos")

    def tasks() -> Iterator[tuple[VideoRecord, int]]:
        while True:
            for i in rng.permutation(len(records)):
                yield records[int(i)], int(rng.integers(2**63))

    def decode(record: VideoRecord, clip_seed: int) -> tuple[np.ndarray, int] | None:
        try:
            clip = read_clip(record.path, num_frames=d.num_frames, stride=d.stride, size=d.size,
                             rng=np.random.default_rng(clip_seed), max_pixels=d.max_decode_pixels)
        except DecodeError as err:
            skipped.setdefault(record.path, str(err))
            return None
        return clip, record.label

    def give_up() -> Exception:
        return unreadable_split(what, {r.path: skipped[r.path] for r in records if r.path in skipped}, len(records))

    for items in prefetched(pool, decode, tasks(), batch, patience=2 * len(records), give_up=give_up):
        yield torch.from_numpy(np.stack([clip for clip, _ in items])), torch.tensor([label for _, label in items])


def _print(line: str) -> None:
    print(line, flush=True)


def run_local(
    cfg: Config,
    *,
    device: str = "cpu",
    decode_threads: int = 2,
    evaluate: bool = True,
    say: Callable[[str], None] = _print,
    on_report: Callable[[Report], None] | None = None,
    run_dir: Path | None = None,
    resume_from: Path | None = None,
) -> dict[str, Any]:
    """Train (and evaluate every train.eval_every steps and at the end) one run in this process; returns the
    last evaluation's test top-1/top-5 per evaluated model (none with `evaluate=False`: speed measurements), the
    last `train.log_every` window's mean step metrics (`end/...`) and clips/s. `say` receives the text lines
    (weights loaded, clip cache, each log window's means); `on_report` every report of the loop (e.g. for MLflow:
    the Ray worker's keys). With `run_dir`, checkpoints go there (train.checkpoint_every and the last step);
    `resume_from`: a checkpoint directory to continue from."""
    allocator.configure(cfg.scaling)
    # here: these import PyAV, which the GPU machines running bench.gpu_step lack (it imports this module)
    from ssl_core.data.clip_cache import cache_for_config
    from ssl_core.data.decode import decode_eval_clips
    from ssl_core.data.splits import prepare_data

    algorithm_cls = get_algorithm(cfg.algorithm.name)
    if algorithm_cls.needs_targets:
        raise ConfigError(f"algorithm.name: {cfg.algorithm.name} learns a stored pseudo-labeled set, which only the "
                          "Ray pipeline streams: run it with python -m workflows.train")
    data = prepare_data(cfg, run_dir, needs_unlabeled=algorithm_cls.needs_unlabeled)
    classes = list(data.manifest.classes)
    num_classes = len(classes)
    dev = torch.device(device)
    t = cfg.train
    pool = ThreadPoolExecutor(max(1, decode_threads))
    skipped: dict[str, str] = {}  # unreadable video -> why
    result: dict[str, Any] = {}

    def build() -> tuple[Hooks, int]:
        models = build_models(cfg, num_classes)
        state = load_training_state(resume_from) if resume_from is not None else None
        if state is None:  # a resumed run restores its checkpoint instead
            for report in init_models(cfg, models, classes):
                say(report.line())
        models = place_models(models, cfg, dev)
        optimizer = build_optimizer(cfg, models)
        scheduler = build_scheduler(optimizer, warmup=t.warmup_iters, total=t.iterations)
        start_step = 0
        if state is not None:
            start_step = restore_training_state(state, models=models, optimizer=optimizer, scheduler=scheduler)
            say(f"resumed from {resume_from} at step {start_step}")
        for role in algorithm_cls.frozen_roles:
            models[role] = freeze(load_checkpoint_model(str(cfg.model.teacher))).to(dev)
        algorithm = algorithm_cls(models, cfg.algorithm.resolved_params())
        algorithm.configure_ema(t.ema_decay, t.ema_start)
        held = held_backbones(cfg, algorithm)
        if state is not None:
            algorithm.load_state_dict(state["algorithm"])
            algorithm.load_ema_state_dict(state.get("ema", {}))
        # data.cache: decode every video once (the decode threads build it) and slice the clips from it.
        cache, cache_report = cache_for_config(
            cfg, [r.path for r in (*data.labeled, *data.unlabeled, *data.test)], workers=max(1, decode_threads))
        say(cache_report.line())
        seed = t.seed + 2 * start_step  # a resumed run draws other clips than its first start did
        labeled_it = _clip_batches(data.labeled, t.batch_size, cfg, seed, pool, cache, skipped, "labeled split")
        unlabeled_it = (_clip_batches(data.unlabeled, t.batch_size * t.mu, cfg, seed + 1, pool, cache, skipped,
                                      "unlabeled split") if algorithm.needs_unlabeled else None)
        precise_bn = PreciseBN(t.precise_bn_batches)
        read_eval = cache.decode_eval_clips if cache is not None else decode_eval_clips

        def step(_: int) -> tuple[Mapping[str, Tensor], int]:
            lb, y = next(labeled_it)
            ub, truth = next(unlabeled_it) if unlabeled_it is not None else (None, None)
            labeled, unlabeled = make_batches(lb, y, ub, truth, cfg.augment, dev,
                                              memory_format=input_memory_format(cfg))
            precise_bn.remember(labeled, unlabeled)
            _, metrics = optimize(algorithm, optimizer, scheduler, labeled, unlabeled, grad_clip=t.grad_clip,
                                 held=held)
            return metrics, lb.shape[0] + (0 if ub is None else ub.shape[0])

        def test_split(done: int, last: bool) -> dict[str, float]:
            evaluated = algorithm.deployed_models()
            precise_bn.apply(evaluated, dev)
            counts = {role: EvalCounts.zeros(num_classes) for role in evaluated}
            was_training = {role: m.training for role, m in evaluated.items()}
            for m in evaluated.values():
                m.eval()
            d = cfg.data
            unreadable: dict[str, str] = {}

            def read(r: VideoRecord) -> np.ndarray | None:
                try:
                    return read_eval(r.path, num_frames=d.num_frames, stride=d.stride, size=d.size,
                                     num_clips=d.eval_clips, max_pixels=d.max_decode_pixels)
                except DecodeError as err:  # skipped and counted, as the Ray worker's evaluation does
                    unreadable[r.path] = str(err)
                    return None

            for r, video in zip(data.test, pool.map(read, data.test), strict=True):
                if video is None:
                    continue
                for role, m in evaluated.items():
                    counts[role].add(video_probs(m, torch.from_numpy(video)[None], cfg.augment, dev),
                                     torch.tensor([r.label]))
            if unreadable.keys() - skipped.keys():  # said once per video, not at every evaluation
                say(skipped_videos_line(unreadable, "test", len(data.test) - len(unreadable)))
            skipped.update(unreadable)
            for role, m in evaluated.items():
                m.train(was_training[role])
            metrics: dict[str, float] = {}
            for role, c in counts.items():
                summary = c.summary()
                result.update({f"{k}_{role}": v for k, v in summary.items()})
                metrics.update({f"eval/{k}_{role}": v for k, v in summary.items()})
                metrics.update({f"eval_class/{name}_{role}": v
                                for name, v in zip(classes, c.per_class().tolist(), strict=True)})
            return metrics

        def show(report: Report) -> None:
            if report.due.log:
                means = {k: v for k, v in report.window.items() if v == v}  # a metric never seen: no number to show
                result["last_window"] = means
                say(f"step {report.step}: " + " ".join(f"{k}={v:.3f}" for k, v in sorted(means.items())))
            if on_report is not None:
                on_report(report)

        def checkpoint(report: Report) -> None:
            assert run_dir is not None
            save_training_state(
                step_checkpoint_dir(run_dir, report.step), models=algorithm.trainable_models(), optimizer=optimizer,
                scheduler=scheduler, step=report.step, algorithm_state=algorithm.state_dict(),
                model_names=model_names(cfg), num_classes=num_classes, meta=model_meta(cfg, classes),
                ema=algorithm.ema_state_dict())
            keep_newest_checkpoints(run_dir, t.keep_checkpoints)

        hooks = Hooks(step=step, report=show, evaluate=test_split if evaluate else None,
                      checkpoint=checkpoint if run_dir is not None else None,
                      extras=lambda: {"lr": base_lr(optimizer), "data/skipped_videos": float(len(skipped))})
        return hooks, start_step

    schedule = Schedule(t.iterations, t.log_every, t.eval_every, t.checkpoint_every)
    try:
        finished = run(t.seed, build, schedule)
    finally:
        pool.shutdown()
    if finished.start_step >= t.iterations:
        say(f"nothing to train: the checkpoint is at step {finished.start_step}, train.iterations is {t.iterations}")
    out: dict[str, Any] = {f"end/{k}": v for k, v in result.pop("last_window", {}).items()}
    out.update({"train_clips_per_s": finished.clips / max(finished.seconds, 1e-9), "train_seconds": finished.seconds})
    out.update(result)
    return out


def resume_point(storage: str | Path, which: str) -> Path:
    """--resume: `latest` -> the newest training checkpoint_<step> under storage's run folders; else a checkpoint
    directory or a run folder (its newest checkpoint). Only a checkpoint whose state loads is chosen: an unreadable
    newer one is skipped with a warning (CheckpointError when none is left)."""
    if which == "latest":
        return newest_step_checkpoint(storage, stage=None)[0]
    return latest_checkpoint_dir(which)


@reports_user_errors()
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ray-free training runner (same step and loop as the Ray worker).")
    parser.add_argument("--config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--decode-threads", type=int, default=2, help="threads decoding clips ahead of the step")
    parser.add_argument("--resume", metavar="latest|DIR", help="continue from a checkpoint (or a run folder's newest)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    torch.set_num_threads(max(1, cfg.scaling.torch_threads))
    if args.resume is not None:
        try:
            resume_from: Path | None = resume_point(cfg.output.storage, args.resume)
        except (CheckpointError, FileNotFoundError) as err:
            raise CheckpointError(f"--resume {args.resume}: {err}") from err
        assert resume_from is not None
        run_dir = resume_from.parent
    else:
        resume_from = None
        _, run_dir = claim_run_dir(cfg.output.storage, cfg.tracking.run_name or stamped(f"{cfg.algorithm.name}-local"))
    print(f"run folder: {run_dir}", flush=True)
    with discarded_on_failure(run_dir) if resume_from is None else contextlib.nullcontext():
        if resume_from is None:
            (run_dir / "config.yaml").write_text(dump_yaml(cfg))
        result = run_local(cfg, device=args.device, decode_threads=args.decode_threads, run_dir=run_dir,
                           resume_from=resume_from)
    for key, value in result.items():
        print(f"{key}: {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
