"""GPU training-step throughput and fraction of peak: the real supervised / FixMatch / CMPL step on big models.

    python -m bench.gpu_step                     # r3d_50 + r3d_50_w0.25, 8 x 224^2 crops, bf16 autocast, cuda
    python -m bench.gpu_step --device cpu --models small3d,small3d_w0.5 --size 72 --crop 64 --steps 3  # smoke

No Ray and no decode (the GPU machines have neither; DESIGN.md): uint8 clips already on the device go
through the same `ssl_core.loop.make_batches` (augmentation on the device) and `optimize` (bf16 autocast on
CUDA, backward, grad clip, AdamW, LR schedule) as the Ray Train worker. Per algorithm it prints clips/s
(labeled + unlabeled clips per second, the loop's `perf/clips_per_s`), the share of the step spent augmenting
(make_batches timed alone, side by side), the model FLOPs of one step (torch.utils.flop_counter: forward +
backward convolutions and matmuls) and the fraction of the device's dense bf16 peak they reach. Results
also go to bench/out/gpu_step.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ssl_core.algorithms import get_algorithm
from ssl_core.config import load_config
from ssl_core.loop import build_models, build_optimizer, make_batches, optimize
from ssl_core.schedule import build_scheduler

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by a substring of the device name.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def timed(fn: Callable[[], Any], device: torch.device, steps: int) -> float:
    """Seconds per call of fn, over `steps` calls after the device has finished all earlier work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def measure(algorithm_name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    primary, auxiliary = args.models.split(",")
    cfg = load_config(None, [
        f"algorithm.name={algorithm_name}", f"model.primary={primary}", f"model.auxiliary={auxiliary}",
        f"train.batch_size={args.batch}", f"train.mu={args.mu}", f"train.iterations={10 ** 6}",
        f"data.num_frames={args.frames}", f"data.size={args.size}", f"augment.crop_size={args.crop}",
    ])
    torch.manual_seed(0)
    models = {role: m.to(device) for role, m in build_models(cfg, args.classes).items()}
    optimizer = build_optimizer(cfg, models)
    scheduler = build_scheduler(optimizer, warmup=cfg.train.warmup_iters, total=cfg.train.iterations)
    algorithm = get_algorithm(algorithm_name)(models, cfg.algorithm.resolved_params())
    shape = (args.frames, args.size, args.size, 3)
    lb = torch.randint(0, 256, (args.batch, *shape), dtype=torch.uint8, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    ub = torch.randint(0, 256, (args.batch * args.mu, *shape), dtype=torch.uint8, device=device)
    truth = torch.randint(0, args.classes, (args.batch * args.mu,), device=device)
    if not algorithm.needs_unlabeled:
        ub = truth = None
    clips = args.batch + (0 if ub is None else ub.shape[0])

    def batches() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        return make_batches(lb, y, ub, truth, cfg.augment, device)

    def step() -> None:
        optimize(algorithm, optimizer, scheduler, *batches(), grad_clip=cfg.train.grad_clip)

    timed(step, device, args.warmup)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s = timed(step, device, args.steps)
    augment_s = timed(batches, device, args.steps)
    labeled, unlabeled = batches()
    with FlopCounterMode(display=False) as counter:
        optimize(algorithm, optimizer, scheduler, labeled, unlabeled, grad_clip=cfg.train.grad_clip)
    flops = counter.get_total_flops()
    peak = peak_tflops(device)
    achieved = flops / step_s / 1e12
    return {
        "algorithm": algorithm_name, "clips_per_step": clips, "step_ms": 1000 * step_s,
        "clips_per_s": clips / step_s, "augment_share": augment_s / step_s, "tflop_per_step": flops / 1e12,
        "achieved_tflops": achieved, "fraction_of_peak": None if peak is None else achieved / peak,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "parameters": {role: sum(p.numel() for p in m.parameters()) for role, m in models.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", default="supervised,fixmatch,cmpl")
    parser.add_argument("--models", default="r3d_50,r3d_50_w0.25", help="primary,auxiliary")
    parser.add_argument("--batch", type=int, default=8, help="labeled clips per step")
    parser.add_argument("--mu", type=int, default=3, help="unlabeled clips per labeled clip")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=256, help="decoded short side (square clips here)")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--classes", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="bench/out/gpu_step.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    # TF32 for any fp32 matmul/conv left outside autocast, as a GPU training run would set.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, models {args.models}, batch {args.batch} + "
          f"{args.batch * args.mu} unlabeled, clips {args.frames}x{args.size}^2 -> {args.crop}^2, "
          f"peak bf16 {peak_tflops(device)} TFLOP/s", flush=True)
    results = []
    for algorithm_name in args.algorithms.split(","):
        r = measure(algorithm_name, args, device)
        results.append(r)
        frac = "n/a" if r["fraction_of_peak"] is None else f"{100 * r['fraction_of_peak']:.1f}%"
        print(f"{algorithm_name:>10}: {r['clips_per_s']:8.1f} clips/s  step {r['step_ms']:7.1f} ms  "
              f"augment {100 * r['augment_share']:4.1f}% of step  {r['tflop_per_step']:.2f} TFLOP/step  "
              f"{r['achieved_tflops']:.1f} TFLOP/s = {frac} of peak  mem {r['peak_memory_gib']} GiB", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": name, "args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
