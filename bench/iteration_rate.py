"""Training iterations per minute with and without the decoded-clip cache, per method, side by side.

    python -m bench.iteration_rate                                  # demo recipe, 60 steps per run, ~5 min
    python -m bench.iteration_rate --steps 100 --methods supervised,cmpl --set train.batch_size=4

For each method (supervised, fixmatch, cmpl by default) the Ray-free step loop (`ssl_core.loop.run_local`, the
Ray worker's step) trains `--steps` iterations of `--config` twice, back to back: `data.cache=off` (clips decoded
from the files by `--decode-threads` threads ahead of the step, as before the cache) and `data.cache=on` (clips
sliced from the cache, built beforehand and not timed). Same seeds, so the same clips and the same steps; the
prefetch warm-up of the first steps is timed in both arms alike. Prints one line per method,
`it_per_min_off=<a> it_per_min_on=<b> ratio=<b / a>`; results also go to bench/out/iteration_rate.json.
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
from ssl_core.data.prepare import ensure_synthetic
from ssl_core.loop import run_local

OUT = Path("bench/out")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--methods", default="supervised,fixmatch,cmpl")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--decode-threads", type=int, default=1, help="as one Ray decode task per core")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for method in args.methods.split(","):
        rates = {}
        for mode in ("off", "on"):
            cfg = load_config(args.config, [*args.set, f"algorithm.name={method}", f"train.iterations={args.steps}",
                                             f"train.log_every={args.steps}", f"data.cache={mode}"])
            ensure_synthetic(cfg)
            result = run_local(cfg, device="cpu", decode_threads=args.decode_threads, evaluate=False)
            rates[mode] = 60 * args.steps / result["train_seconds"]
        row = {"method": method, "steps": args.steps, "it_per_min_off": rates["off"], "it_per_min_on": rates["on"],
               "ratio": rates["on"] / rates["off"]}
        rows.append(row)
        print(f"{method}: it_per_min_off={row['it_per_min_off']:.1f} it_per_min_on={row['it_per_min_on']:.1f} "
              f"ratio={row['ratio']:.2f}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "iteration_rate.json").write_text(json.dumps(
        {"machine": platform.machine(), "cpus": os.cpu_count(), "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
