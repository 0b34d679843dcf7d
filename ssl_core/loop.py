"""One optimisation step in plain view, shared by the Ray Train worker and a Ray-free local loop.

The local loop decodes clips in this process and trains without Ray or MLflow: a baseline for benchmarks,
a way to check that a dataset is learnable, and how GPU machines without Ray measure the step:

    python -m ssl_core.loop --config configs/demo.yaml --set algorithm.name=supervised \
        --set data.labeled_fraction=1.0 --set train.iterations=300
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from ssl_core import allocator
from ssl_core.algorithms import get_algorithm
from ssl_core.algorithms.registry import Algorithm, StepOutput
from ssl_core.checkpoint import load_checkpoint_model, unwrap
from ssl_core.config import Config, load_config
from ssl_core.data.batched_augment import unlabeled_views, weak_view
from ssl_core.data.transforms import AugmentConfig
from ssl_core.evaluate import EvalCounts, PreciseBN
from ssl_core.metrics import WindowMeans
from ssl_core.models import build_model
from ssl_core.models.init import InitReport, InitSource, load_init, read_init_source
from ssl_core.schedule import build_scheduler
from ssl_core.step import TRUE_LABEL_KEY, ssl_step

if TYPE_CHECKING:  # both import PyAV, which the step's half of this module does without
    from ssl_core.data.clip_cache import ClipCache
    from ssl_core.data.manifest import VideoRecord


def model_names(cfg: Config) -> dict[str, str]:
    """Role -> registered model name for the roles the configured algorithm trains (a frozen teacher is
    loaded, not built). MPL's teacher shares the primary's architecture."""
    algorithm_cls = get_algorithm(cfg.algorithm.name)
    names = {"primary": cfg.model.primary, "auxiliary": cfg.model.auxiliary, "teacher": cfg.model.primary}
    roles = algorithm_cls.roles_for(cfg.algorithm.resolved_params())
    return {role: names[role] for role in roles if role not in algorithm_cls.frozen_roles}


def build_models(cfg: Config, num_classes: int) -> dict[str, nn.Module]:
    """The trainable models of the configured algorithm, with the configured noise (dropout, stochastic depth)."""
    models = {}
    for role, name in model_names(cfg).items():
        model = build_model(name, num_classes=num_classes, dropout=cfg.model.dropout)
        if cfg.model.stochastic_depth > 0:
            from ssl_core.models.stochastic_depth import add_stochastic_depth

            model = add_stochastic_depth(model, cfg.model.stochastic_depth)
        models[role] = model
    return models


# Config key (model.<key>) whose pretrained weights start each trainable role. MPL's teacher is built with the
# primary's architecture and starts from the same weights: the student learns the unlabeled clips only from the
# teacher's pseudo-labels, so a random teacher beside a pretrained student would first teach it noise.
INIT_KEYS = {"primary": "init", "teacher": "init", "auxiliary": "auxiliary_init"}


def init_models(
    cfg: Config,
    models: Mapping[str, nn.Module],
    classes: Sequence[str] | None = None,
    sources: Mapping[str, str] | None = None,
) -> list[InitReport]:
    """Load `model.init` / `model.auxiliary_init` into freshly built models in place (see INIT_KEYS); one report
    per loaded model, for the console (`report.line()`) and MLflow. Call it on a fresh start only: a resumed run
    restores its checkpoint instead. `classes`: this run's, so a source naming others keeps a fresh classifier.
    `sources`: config key -> local source replacing the configured one (workflows.train resolves an MLflow
    URI into a file once, on the driver). Raises InitError (a ConfigError) for weights of another architecture."""
    reports: list[InitReport] = []
    read: dict[str, InitSource] = {}
    for role, model in models.items():
        key = INIT_KEYS.get(role)
        if key is None:
            continue
        spec = sources[key] if sources is not None and key in sources else getattr(cfg.model, key)
        if spec is None:
            continue
        if key not in read:
            read[key] = read_init_source(spec, key=f"model.{key}")
        src = read[key]
        reports.append(load_init(unwrap(model), src.state_dict, name=role, source=src.description,
                                 key=f"model.{key}", source_classes=src.classes, classes=classes))
    return reports


def freeze(model: nn.Module) -> nn.Module:
    """A teacher that is only ever called under no_grad: eval mode, no parameter gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_optimizer(cfg: Config, models: Mapping[str, nn.Module]) -> torch.optim.Optimizer:
    """SGD or AdamW over every trained model; the fused (one kernel per step) form when the models are on CUDA,
    so place them first (place_models)."""
    params = [p for m in models.values() for p in m.parameters()]
    fused = bool(params) and all(p.is_cuda for p in params)
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=True,
                               fused=fused or None)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=fused or None)


def input_memory_format(cfg: Config) -> torch.memory_format:
    """The memory format of model inputs (B, 3, T, h, w): channels_last_3d with train.channels_last."""
    return torch.channels_last_3d if cfg.train.channels_last else torch.contiguous_format


def place_models(models: Mapping[str, nn.Module], cfg: Config, device: torch.device) -> dict[str, nn.Module]:
    """The models on `device`, in the configured memory format, compiled in place with train.compile."""
    if device.type == "cuda":
        # Clip shapes are fixed for a run: let cuDNN time its algorithms once and keep the fastest.
        torch.backends.cudnn.benchmark = True
    placed = {}
    for role, model in models.items():
        model = model.to(device, memory_format=input_memory_format(cfg))
        if cfg.train.compile:
            model.compile()
        placed[role] = model
    return placed


def make_batches(
    labeled_clips: Tensor,  # (B_l, T, H, W, 3) uint8
    labels: Tensor,  # (B_l,) int64
    unlabeled_clips: Tensor | None,  # (B_u, T, H, W, 3) uint8
    true_labels: Tensor | None,  # (B_u,) int64, metrics only
    aug: AugmentConfig,
    device: torch.device,
    targets: Tensor | None = None,  # (B_u, C) stored teacher probabilities (data.pseudo_labels)
    memory_format: torch.memory_format = torch.contiguous_format,  # of the views (input_memory_format)
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """Augmented, normalised batches in the algorithm contract (the unlabeled clip yields weak + strong).

    The uint8 clips move to `device` first and are augmented there: a quarter of the bytes of float views
    cross the bus, and a GPU does the augmentation work (one batched kernel per op, ssl_core.data.batched_augment)."""
    video = weak_view(labeled_clips.to(device), aug).contiguous(memory_format=memory_format)
    labeled = {"video": video, "label": labels.to(device)}
    if unlabeled_clips is None:
        return labeled, None
    weak, strong = (v.contiguous(memory_format=memory_format) for v in unlabeled_views(unlabeled_clips.to(device), aug))
    unlabeled = {"weak": weak, "strong": strong}
    if true_labels is not None:
        unlabeled[TRUE_LABEL_KEY] = true_labels.to(device)
    if targets is not None:
        unlabeled["target"] = targets.float().to(device)
    return labeled, unlabeled


def stream_batches(
    lb: Mapping[str, Tensor],  # {"clip", "label"} or, augmented on the data workers, {"video", "label"}
    ub: Mapping[str, Tensor] | None,  # {"clip" | "weak", "strong", "true_label"[, "target"]}
    aug: AugmentConfig,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,  # of the views (input_memory_format)
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """Batches from the Ray Data streams in the algorithm contract: uint8 clips are augmented here (on the
    training device); views the data workers already made (augment.placement = data) only move."""
    if "clip" in lb:
        return make_batches(
            lb["clip"], lb["label"], None if ub is None else ub["clip"], None if ub is None else ub["true_label"],
            aug, device, targets=None if ub is None else ub.get("target"), memory_format=memory_format,
        )

    def view(v: Tensor) -> Tensor:
        return v.to(device).contiguous(memory_format=memory_format)

    labeled = {"video": view(lb["video"]), "label": lb["label"].to(device)}
    if ub is None:
        return labeled, None
    unlabeled = {"weak": view(ub["weak"]), "strong": view(ub["strong"]), TRUE_LABEL_KEY: ub["true_label"].to(device)}
    if "target" in ub:
        unlabeled["target"] = ub["target"].float().to(device)
    return labeled, unlabeled


def optimize(
    algorithm: Algorithm,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    labeled: dict[str, Tensor],
    unlabeled: dict[str, Tensor] | None,
    *,
    grad_clip: float,
) -> tuple[StepOutput, dict[str, Tensor]]:
    """ssl_step -> backward -> clip -> step -> EMA -> LR; returns the step output and its scalar metrics as
    detached 0-d tensors on the device: nothing here waits for the device (ssl_core.metrics.WindowMeans
    brings them over once per logging window)."""
    algorithm.steps_done = scheduler.last_epoch  # steps done so far (the scheduler is checkpointed, so this resumes)
    device_type = labeled["video"].device.type
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device_type == "cuda" else contextlib.nullcontext()
    )
    with autocast:
        out = ssl_step(algorithm, labeled, unlabeled)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    params = [p for m in algorithm.trainable_models().values() for p in m.parameters()]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    algorithm.after_optimizer_step()
    algorithm.update_ema()
    scheduler.step()
    metrics = {"loss/total": out.loss.detach(), "grad_norm": grad_norm.detach()}
    metrics.update({k: v.detach() for k, v in out.metrics.items()})
    return out, metrics


# --- the Ray-free loop ---------------------------------------------------------------------------------


T = TypeVar("T")


def prefetched(
    pool: ThreadPoolExecutor, decode: Callable[..., T | None], tasks: Iterator[tuple[Any, ...]], batch: int
) -> Iterator[list[T]]:
    """Endless lists of `batch` decoded items, `decode(*task)` run by `pool`'s threads two batches ahead so
    decoding overlaps the training step (PyAV releases the GIL); a None (an unreadable video) is skipped."""
    ahead: deque[Future[T | None]] = deque()
    items: list[T] = []
    while True:
        while len(ahead) < 2 * batch:
            ahead.append(pool.submit(decode, *next(tasks)))
        decoded = ahead.popleft().result()
        if decoded is None:
            continue
        items.append(decoded)
        if len(items) == batch:
            yield items
            items = []


def _clip_batches(
    records: Sequence[VideoRecord], batch: int, cfg: Config, seed: int, pool: ThreadPoolExecutor,
    cache: ClipCache | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless in-process batches of decoded clips (records reshuffled each pass), decoded by `pool`'s
    threads two batches ahead, so decoding overlaps the training step (PyAV releases the GIL).
    With a `cache` (data.cache) the same clips are sliced from it instead of decoded."""
    # Here, not at the top: the step's half of this module runs where PyAV is absent (bench.gpu_step on a GPU
    # machine).
    from ssl_core.data.decode import DecodeError, decode_clip

    rng = np.random.default_rng(seed)
    d = cfg.data
    read_clip = cache.decode_clip if cache is not None else decode_clip

    def tasks() -> Iterator[tuple[VideoRecord, int]]:
        while True:
            for i in rng.permutation(len(records)):
                yield records[int(i)], int(rng.integers(2**63))

    def decode(record: VideoRecord, clip_seed: int) -> tuple[np.ndarray, int] | None:
        try:
            clip = read_clip(record.path, num_frames=d.num_frames, stride=d.stride, size=d.size,
                             rng=np.random.default_rng(clip_seed))
        except DecodeError:
            return None
        return clip, record.label

    for items in prefetched(pool, decode, tasks(), batch):
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
    on_window: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train and evaluate one run in this process; returns test top-1/top-5 per evaluated model (not with
    `evaluate=False`: speed measurements), the last `train.log_every` window's mean step metrics (`end/...`)
    and clips/s. `say` receives the text lines (weights loaded, clip cache, each log window's means);
    `on_window(step, means)` each log window's means too (e.g. for MLflow)."""
    allocator.configure(cfg.scaling)
    from ssl_core.data.clip_cache import cache_for_config
    from ssl_core.data.decode import decode_eval_clips
    from ssl_core.data.splits import prepare_data
    from ssl_core.evaluate import video_probs

    torch.manual_seed(cfg.train.seed)
    data = prepare_data(cfg, run_dir=None)
    num_classes = len(data.manifest.classes)
    dev = torch.device(device)
    models = build_models(cfg, num_classes)
    for report in init_models(cfg, models, data.manifest.classes):
        say(report.line())
    models = place_models(models, cfg, dev)
    optimizer = build_optimizer(cfg, models)
    algorithm_cls = get_algorithm(cfg.algorithm.name)
    if algorithm_cls.needs_targets:
        raise ValueError(f"{cfg.algorithm.name} learns a stored pseudo-labeled set, which only the Ray pipeline "
                         "streams: run it with python -m workflows.train")
    for role in algorithm_cls.frozen_roles:
        models[role] = freeze(load_checkpoint_model(str(cfg.model.teacher))).to(dev)
    algorithm = algorithm_cls(models, cfg.algorithm.resolved_params())
    t = cfg.train
    algorithm.configure_ema(t.ema_decay, t.ema_start)
    scheduler = build_scheduler(optimizer, warmup=t.warmup_iters, total=t.iterations)
    pool = ThreadPoolExecutor(max(1, decode_threads))
    # data.cache: decode every video once (the decode threads build it) and slice the clips from it.
    cache, cache_report = cache_for_config(
        cfg, [r.path for r in (*data.labeled, *data.unlabeled, *data.test)], workers=max(1, decode_threads))
    say(cache_report.line())
    labeled_it = _clip_batches(data.labeled, t.batch_size, cfg, t.seed, pool, cache)
    unlabeled_it = (
        _clip_batches(data.unlabeled, t.batch_size * t.mu, cfg, t.seed + 1, pool, cache)
        if algorithm.needs_unlabeled else None
    )
    clips, start = 0, time.perf_counter()
    window = WindowMeans()
    # The last log window's means (mask rate, pseudo-label accuracy, losses): where training ended.
    last_window: dict[str, float] = {}
    precise_bn = PreciseBN(t.precise_bn_batches)
    for step in range(t.iterations):
        lb, y = next(labeled_it)
        ub, truth = next(unlabeled_it) if unlabeled_it is not None else (None, None)
        labeled, unlabeled = make_batches(lb, y, ub, truth, cfg.augment, dev, memory_format=input_memory_format(cfg))
        precise_bn.remember(labeled, unlabeled)
        _, metrics = optimize(algorithm, optimizer, scheduler, labeled, unlabeled, grad_clip=t.grad_clip)
        clips += lb.shape[0] + (0 if ub is None else ub.shape[0])
        window.add(metrics)
        if (step + 1) % t.log_every == 0 or step + 1 == t.iterations:
            last_window = window.means()
            shown = " ".join(f"{k}={v:.3f}" for k, v in sorted(last_window.items()))
            say(f"step {step + 1}: {shown}")
            if on_window is not None:
                on_window(step + 1, last_window)
    elapsed = time.perf_counter() - start
    result: dict[str, Any] = {f"end/{k}": v for k, v in last_window.items()}
    result.update({"train_clips_per_s": clips / elapsed, "train_seconds": elapsed})
    if not evaluate:
        pool.shutdown()
        return result
    evaluated = algorithm.deployed_models()
    precise_bn.apply(evaluated, dev)
    counts = {role: EvalCounts.zeros(num_classes) for role in evaluated}
    d = cfg.data
    for m in evaluated.values():
        m.eval()
    read_eval = cache.decode_eval_clips if cache is not None else decode_eval_clips
    videos = pool.map(lambda r: read_eval(r.path, num_frames=d.num_frames, stride=d.stride, size=d.size,
                                          num_clips=d.eval_clips), data.test)
    for r, video in zip(data.test, videos, strict=True):
        for role, m in evaluated.items():
            counts[role].add(video_probs(m, torch.from_numpy(video)[None], cfg.augment, dev), torch.tensor([r.label]))
    pool.shutdown()
    for role, c in counts.items():
        result.update({f"{k}_{role}": v for k, v in c.summary().items()})
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Ray-free training loop (same step as the Ray worker).")
    parser.add_argument("--config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--decode-threads", type=int, default=2, help="threads decoding clips ahead of the step")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    torch.set_num_threads(max(1, cfg.scaling.torch_threads))
    for key, value in run_local(cfg, device=args.device, decode_threads=args.decode_threads).items():
        print(f"{key}: {value:.4f}")


if __name__ == "__main__":
    main()
