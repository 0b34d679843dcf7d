"""Training iterations per minute with one setting at two values (by default the decoded-clip cache off vs
on), per method, side by side.

    python -m bench.iteration_rate                                  # demo recipe, 60 steps per run, ~5 min
    python -m bench.iteration_rate --compare scaling.torch_threads=1,2 --steps 100 \
        --set algorithm.cmpl.unsup_warmup=0 --set algorithm.fixmatch.unsup_warmup=0   # past the warm-up

For each method (supervised, fixmatch, cmpl by default) the Ray-free step loop (`ssl_core.loop.run_local`, the
Ray worker's step) trains `--steps` iterations of `--config` twice, back to back, once per value of `--compare
KEY=A,B`. The default, `data.cache=off,on`: clips decoded from the files by `--decode-threads` threads ahead of the
step (as before the cache) vs sliced from the cache (built beforehand, not timed). Same seeds, so the same clips
and the same steps; the prefetch warm-up of the first steps is timed in both arms alike. The step runs on
`scaling.torch_threads` intra-op threads. Prints one line per method, `it_per_min_<A>=<a> it_per_min_<B>=<b>
ratio=<b / a>`; results also go to bench/out/iteration_rate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path

import torch

from ssl_core.config import load_config
from ssl_core.data.splits import ensure_synthetic
from ssl_core.loop import run_local

OUT = Path("bench/out")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--methods", default="supervised,fixmatch,cmpl")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--decode-threads", type=int, default=1, help="as one Ray decode task per core")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--compare", default="data.cache=off,on", metavar="KEY=A,B",
                        help="the setting timed at two values, side by side")
    args = parser.parse_args(argv)
    key, _, values = args.compare.partition("=")
    arms = values.split(",")
    if not key or len(arms) != 2:
        parser.error(f"--compare {args.compare!r}: expected KEY=A,B, e.g. data.cache=off,on")
    rows = []
    for method in args.methods.split(","):
        rates = {}
        for arm in arms:
            cfg = load_config(args.config, [*args.set, f"algorithm.name={method}", f"train.iterations={args.steps}",
                                             f"train.log_every={args.steps}", f"{key}={arm}"])
            ensure_synthetic(cfg)
            previous = torch.get_num_threads()
            torch.set_num_threads(max(1, cfg.scaling.torch_threads))
            try:
                result = run_local(cfg, device="cpu", decode_threads=args.decode_threads, evaluate=False)
            finally:
                torch.set_num_threads(previous)
            rates[arm] = 60 * args.steps / result["train_seconds"]
        a, b = arms
        row = {"method": method, "steps": args.steps, "compare": key, f"it_per_min_{a}": rates[a],
               f"it_per_min_{b}": rates[b], "ratio": rates[b] / rates[a]}
        rows.append(row)
        print(f"{method}: it_per_min_{a}={rates[a]:.1f} it_per_min_{b}={rates[b]:.1f} ratio={row['ratio']:.2f}",
              flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "iteration_rate.json").write_text(json.dumps(
        {"machine": platform.machine(), "cpus": os.cpu_count(), "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
