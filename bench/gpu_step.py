"""GPU training-step throughput, lever by lever: the real supervised / FixMatch / CMPL step on big models.

    python -m bench.gpu_step                     # r3d_50 + r3d_50_w0.25, 8 + 24 clips of 8 x 256^2 -> 224^2, bf16
    python -m bench.gpu_step --quick             # fewer steps, no compile: ~4 min on an H100
    python -m bench.gpu_step --device cpu --models small3d,small3d_w0.5 --size 40 --crop 32 --quick  # smoke

No Ray and no decode (a GPU machine may have torch only): uint8 clips already on the device go through
the worker's own step code (`ssl_core.train_step.make_batches`: augmentation on the device; `optimize`: bf16 autocast
on CUDA, backward, grad clip, optimizer, EMA, LR schedule). Each configuration below runs every algorithm,
side by side in one process:
  baseline     every lever off: what the step was before them;
  +<lever>     the baseline with that one lever on;
  all          every lever on (the code's defaults on CUDA, plus train.channels_last and weak_no_grad);
  all+compile  and torch.compile (--compile; its first steps take minutes);
  all xN       every lever on and N times the clips per step (--batch-scale N).
Levers: batched_augment (ssl_core.data.batched_augment instead of the per-clip torchvision loop),
channels_last (train.channels_last: channels_last_3d models and clips), fused_optimizer (fused AdamW),
cudnn_benchmark (cuDNN picks its fastest algorithms), weak_no_grad (FixMatch / CMPL: the weak view forward
without gradient), no_step_sync (step metrics stay on the device; off = the host reads them every step).
Per configuration and algorithm: clips/s (labeled + unlabeled clips per second), step ms, the share of the
step spent augmenting (make_batches timed alone), model FLOPs of one step (torch.utils.flop_counter: forward +
backward convolutions and matmuls), the fraction of the device's dense bf16 peak they reach, peak memory; and
for `--profile` (one algorithm) the profiler's top-10 kernels, with a warning when slow fallback convolution
kernels (slow_conv3d, vol2col) ran instead of cuDNN's. Results go to bench/out/gpu_step.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from bench.augment_speed import per_clip_batch
from bench.augment_speed import seconds_per_call as timed
from ssl_core.algorithms import get_algorithm
from ssl_core.config import Config, load_config
from ssl_core.data.transforms import augment_per_clip, weak_transform
from ssl_core.metrics import WindowMeans
from ssl_core.schedule import build_scheduler
from ssl_core.step import TRUE_LABEL_KEY
from ssl_core.train_step import build_models, build_optimizer, input_memory_format, make_batches, optimize, place_models

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, by a substring of the device name.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0}
# Kernels of torch's own 3D convolution, which run when cuDNN does not take a conv (e.g. some dtypes).
FALLBACK_CONV = ("slow_conv3d", "vol2col", "col2vol", "slow_conv_dilated3d")


@dataclass(frozen=True)
class Levers:
    batched_augment: bool = True
    channels_last: bool = True
    fused_optimizer: bool = True
    cudnn_benchmark: bool = True
    weak_no_grad: bool = True
    no_step_sync: bool = True
    compile: bool = False
    batch_scale: int = 1


LEVER_NAMES = ("batched_augment", "channels_last", "fused_optimizer", "cudnn_benchmark", "weak_no_grad", "no_step_sync")


def configurations(compile_too: bool, batch_scale: int) -> dict[str, Levers]:
    baseline = Levers(**{name: False for name in LEVER_NAMES})
    configs = {"baseline": baseline}
    configs.update({f"+{name}": dataclasses.replace(baseline, **{name: True}) for name in LEVER_NAMES})
    configs["all"] = Levers()
    if compile_too:
        configs["all+compile"] = Levers(compile=True)
    if batch_scale > 1:
        configs[f"all x{batch_scale}"] = Levers(batch_scale=batch_scale)
    return configs


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


class Step:
    """One algorithm's training step under one lever setting, on synthetic uint8 clips already on the device."""

    def __init__(self, algorithm_name: str, levers: Levers, args: argparse.Namespace, device: torch.device) -> None:
        primary, auxiliary = args.models.split(",")
        batch = args.batch * levers.batch_scale
        self.cfg: Config = load_config(None, [
            f"algorithm.name={algorithm_name}", f"model.primary={primary}", f"model.auxiliary={auxiliary}",
            f"train.batch_size={batch}", f"train.mu={args.mu}", f"train.iterations={10 ** 6}",
            "train.optimizer=adamw", f"train.channels_last={str(levers.channels_last).lower()}",
            f"train.compile={str(levers.compile).lower()}",
            f"data.num_frames={args.frames}", f"data.size={args.size}", f"augment.crop_size={args.crop}",
        ])
        self.levers, self.device = levers, device
        torch.manual_seed(0)
        self.models = place_models(build_models(self.cfg, args.classes), self.cfg, device)
        torch.backends.cudnn.benchmark = levers.cudnn_benchmark  # after place_models, which turns it on
        self.optimizer = build_optimizer(self.cfg, self.models)
        if not levers.fused_optimizer:
            self.optimizer = torch.optim.AdamW(self.optimizer.param_groups[0]["params"], lr=self.cfg.train.lr,
                                               weight_decay=self.cfg.train.weight_decay, fused=False)
        self.scheduler = build_scheduler(self.optimizer, warmup=10, total=self.cfg.train.iterations)
        algorithm_cls = get_algorithm(algorithm_name)
        params = self.cfg.algorithm.resolved_params()
        if hasattr(params, "weak_no_grad"):
            params = dataclasses.replace(params, weak_no_grad=levers.weak_no_grad)
        self.algorithm = algorithm_cls(self.models, params)
        g = torch.Generator().manual_seed(0)
        shape = (args.frames, args.size, args.size, 3)
        self.lb = torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=g).to(device)
        self.y = torch.randint(0, args.classes, (batch,), generator=g).to(device)
        self.ub = self.truth = None
        if algorithm_cls.needs_unlabeled:
            self.ub = torch.randint(0, 256, (batch * args.mu, *shape), dtype=torch.uint8, generator=g).to(device)
            self.truth = torch.randint(0, args.classes, (batch * args.mu,), generator=g).to(device)
        self.clips = batch + (0 if self.ub is None else self.ub.shape[0])
        self.window = WindowMeans()

    def batches(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
        aug, fmt = self.cfg.augment, input_memory_format(self.cfg)
        if self.levers.batched_augment:
            return make_batches(self.lb, self.y, self.ub, self.truth, aug, self.device, memory_format=fmt)
        if self.ub is None:
            video = augment_per_clip(self.lb, weak_transform(aug))
            return {"video": video.contiguous(memory_format=fmt), "label": self.y}, None
        video, weak, strong = (v.contiguous(memory_format=fmt) for v in per_clip_batch(self.lb, self.ub, aug))
        return {"video": video, "label": self.y}, {"weak": weak, "strong": strong, TRUE_LABEL_KEY: self.truth}

    def __call__(self) -> None:
        _, metrics = optimize(self.algorithm, self.optimizer, self.scheduler, *self.batches(),
                              grad_clip=self.cfg.train.grad_clip)
        if self.levers.no_step_sync:
            self.window.add(metrics)
        else:  # what the loops did before: every metric read on the host each step
            for value in metrics.values():
                float(value)

    def flops(self) -> int:
        with FlopCounterMode(display=False) as counter:
            self()
        return counter.get_total_flops()


def top_kernels(step: Step, steps: int = 3, n: int = 10) -> tuple[list[tuple[str, float]], list[str]]:
    """(name, share of device time) of the n costliest kernels over `steps` steps (ops' CPU time on a CPU), and
    the names of any fallback convolution kernels among all of them."""
    on_cuda = step.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if on_cuda:
            torch.cuda.synchronize(step.device)

    def cost(event: Any) -> float:
        if on_cuda:
            return float(getattr(event, "self_device_time_total", 0) or getattr(event, "self_cuda_time_total", 0))
        return float(event.self_cpu_time_total)

    events = [e for e in prof.key_averages() if cost(e) > 0 and (on_cuda or e.key.startswith("aten::"))]
    total = sum(cost(e) for e in events) or 1.0
    events.sort(key=cost, reverse=True)
    fallback = sorted({e.key for e in events if any(f in e.key.lower() for f in FALLBACK_CONV)})
    return [(e.key[:90], cost(e) / total) for e in events[:n]], fallback


def measure(step: Step, args: argparse.Namespace, flops: int) -> dict[str, Any]:
    device = step.device
    timed(step, device, args.warmup)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    step_s = timed(step, device, args.steps)
    augment_s = timed(step.batches, device, args.steps)
    peak = peak_tflops(device)
    achieved = flops / step_s / 1e12
    return {
        "clips_per_step": step.clips, "step_ms": 1000 * step_s, "clips_per_s": step.clips / step_s,
        "augment_share": augment_s / step_s, "tflop_per_step": flops / 1e12, "achieved_tflops": achieved,
        "fraction_of_peak": None if peak is None else achieved / peak,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def versions(device: torch.device) -> dict[str, Any]:
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}


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
    parser.add_argument("--configs", default=None, help="comma-separated configuration names (default: all)")
    parser.add_argument("--compile", action="store_true", help="add the all+compile configuration")
    parser.add_argument("--batch-scale", type=int, default=2, help="add 'all xN' (1: none)")
    parser.add_argument("--profile", default="fixmatch", help="algorithm whose top kernels are listed ('': none)")
    parser.add_argument("--quick", action="store_true", help="3 warm-up + 8 timed steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="bench/out/gpu_step.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.steps = 3, 8
    device = torch.device(args.device)
    # TF32 for any fp32 matmul/conv left outside autocast, as a GPU training run would set.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    info = versions(device)
    print(f"device {info['device']}, torch {info['torch']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}; models "
          f"{args.models}, batch {args.batch} + {args.batch * args.mu} unlabeled, clips {args.frames}x{args.size}^2 "
          f"-> {args.crop}^2, bf16 peak {peak_tflops(device)} TFLOP/s", flush=True)
    configs = configurations(args.compile, args.batch_scale)
    if args.configs:
        configs = {name: configs[name] for name in args.configs.split(",")}
    flops_of: dict[tuple[str, bool, int], int] = {}
    results: list[dict[str, Any]] = []
    baseline_rate: dict[str, float] = {}
    for config_name, levers in configs.items():
        print(f"\n[{config_name}]", flush=True)
        for algorithm_name in args.algorithms.split(","):
            step = Step(algorithm_name, levers, args, device)
            key = (algorithm_name, levers.weak_no_grad, levers.batch_scale)
            if key not in flops_of:  # FLOPs depend on the work, not on layouts or kernels
                flop_step = Step(algorithm_name, dataclasses.replace(levers, compile=False), args, device)
                flops_of[key] = flop_step.flops()
                del flop_step
            r = {"config": config_name, "algorithm": algorithm_name, **dataclasses.asdict(levers),
                 **measure(step, args, flops_of[key])}
            baseline_rate.setdefault(algorithm_name, r["clips_per_s"])
            r["vs_baseline"] = r["clips_per_s"] / baseline_rate[algorithm_name]
            if algorithm_name == args.profile:
                r["top_kernels"], r["fallback_conv_kernels"] = top_kernels(step)
            results.append(r)
            frac = "n/a" if r["fraction_of_peak"] is None else f"{100 * r['fraction_of_peak']:.1f}%"
            mem = "" if r["peak_memory_gib"] is None else f"  mem {r['peak_memory_gib']:.1f} GiB"
            print(f"{algorithm_name:>10}: {r['clips_per_s']:8.1f} clips/s ({r['vs_baseline']:.2f}x baseline)  "
                  f"step {r['step_ms']:7.1f} ms  augment {100 * r['augment_share']:4.1f}%  "
                  f"{r['tflop_per_step']:.2f} TFLOP/step  {r['achieved_tflops']:.1f} TFLOP/s = {frac} of peak{mem}",
                  flush=True)
            if "top_kernels" in r:
                for name, share in r["top_kernels"]:
                    print(f"{'':>14}{100 * share:5.1f}%  {name}")
                if r["fallback_conv_kernels"]:
                    print(f"{'':>14}WARNING fallback convolution kernels ran: {', '.join(r['fallback_conv_kernels'])}")
            del step
            if device.type == "cuda":
                torch.cuda.empty_cache()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**info, "args": vars(args), "results": results}, indent=1))
    print(f"\nresults in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
