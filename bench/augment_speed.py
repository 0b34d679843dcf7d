"""Batched augmentation vs the per-clip loop, for one FixMatch batch, side by side in one run.

    python -m bench.augment_speed                      # this machine's CPU: bench_accuracy's shapes (8 + 16 clips)
    python -m bench.augment_speed --device cuda --batch 8 --mu 3 --size 256 --crop 224   # bench.gpu_step's shapes
    python -m bench.augment_speed --malloc-default     # glibc's allocator defaults, not the training process's

A FixMatch batch is the labeled clips' weak view plus the unlabeled clips' weak and strong views, from uint8
clips (B, T, H, W, 3) already on the device. Contestants: the per-clip loop (torchvision.transforms.v2, one
call per clip: ssl_core.data.transforms.augment_per_clip, what the step used before) and the batched views
(ssl_core.data.batched_augment, one kernel per op for the batch). They alternate, `--repeats` rounds of
`--steps` batches each; the figure is the median over rounds of per-clip time / batched time. Torch threads:
the default (all cores) unless `--threads`. The process keeps freed memory as the training processes do
(`scaling.keep_freed_memory`, ssl_core/allocator.py) unless `--malloc-default`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ssl_core.allocator import keep_freed_memory
from ssl_core.data import batched_augment
from ssl_core.data.transforms import AugmentConfig, augment_per_clip, strong_transform, weak_transform


def per_clip_batch(lb: torch.Tensor, ub: torch.Tensor, aug: AugmentConfig) -> list[torch.Tensor]:
    weak, strong = weak_transform(aug), strong_transform(aug)
    return [augment_per_clip(lb, weak), augment_per_clip(ub, weak), augment_per_clip(ub, strong)]


def batched_batch(lb: torch.Tensor, ub: torch.Tensor, aug: AugmentConfig) -> list[torch.Tensor]:
    return [batched_augment.weak_view(lb, aug), *batched_augment.unlabeled_views(ub, aug)]


def seconds_per_call(fn: Callable[[], Any], device: torch.device, steps: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def compare(*, batch: int, mu: int, frames: int, size: int, crop: int, device: torch.device, steps: int,
            repeats: int) -> dict[str, float]:
    """Median seconds per FixMatch batch of each contestant and the median per-round speed-up."""
    g = torch.Generator().manual_seed(0)
    lb = torch.randint(0, 256, (batch, frames, size, size, 3), dtype=torch.uint8, generator=g).to(device)
    ub = torch.randint(0, 256, (batch * mu, frames, size, size, 3), dtype=torch.uint8, generator=g).to(device)
    aug = AugmentConfig(crop_size=crop)
    contestants = {"per_clip": lambda: per_clip_batch(lb, ub, aug), "batched": lambda: batched_batch(lb, ub, aug)}
    for fn in contestants.values():
        seconds_per_call(fn, device, 1)  # first calls: allocator, cuDNN / kernel caches
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(repeats):
        for name, fn in contestants.items():
            times[name].append(seconds_per_call(fn, device, steps))
    ratios = [p / b for p, b in zip(times["per_clip"], times["batched"], strict=True)]
    return {"per_clip_ms": 1000 * statistics.median(times["per_clip"]),
            "batched_ms": 1000 * statistics.median(times["batched"]), "speedup": statistics.median(ratios)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="labeled clips")
    parser.add_argument("--mu", type=int, default=2, help="unlabeled clips per labeled clip")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=72, help="decoded side (square clips)")
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="batches per contestant and round")
    parser.add_argument("--repeats", type=int, default=7, help="alternating rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--malloc-default", action="store_true",
                        help="leave glibc's allocator thresholds alone (training raises them)")
    args = parser.parse_args(argv)
    kept = not args.malloc_default and keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    r = compare(batch=args.batch, mu=args.mu, frames=args.frames, size=args.size, crop=args.crop, device=device,
                steps=args.steps, repeats=args.repeats)
    print(f"FixMatch batch ({args.batch} labeled + {args.batch * args.mu} unlabeled clips, {args.frames} x "
          f"{args.size}^2 -> {args.crop}^2) on {device}, {torch.get_num_threads()} torch threads, freed memory "
          f"{'kept' if kept else 'returned (allocator defaults)'}: per-clip loop "
          f"{r['per_clip_ms']:.1f} ms, batched {r['batched_ms']:.1f} ms")
    print(f"batched_vs_per_clip={r['speedup']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
