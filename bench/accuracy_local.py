"""The results-table grid through the Ray-free step loop, several runs at once: for GPU machines without Ray.

    python -m bench.accuracy_local --config configs/bench_accuracy.yaml --device cuda --parallel 12 \
        --methods supervised,fixmatch,cmpl --set train.iterations=1500

The same grid (methods x labeled fractions x seeds), per-run overrides and table as `bench.accuracy`, but each
run is `python -m ssl_core.loop` in its own process (in-process PyAV decode, the same step and evaluation
code; no Ray Data, Ray Train or MLflow), `--parallel` at a time on one device. `bench.accuracy` stays the
reference (the real workflow); this one answers "does the ranking change with a larger budget?" where Ray
is not installed. Writes <--out>/results.json, one log per run and prints the markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.accuracy import add_grid_arguments, load_grid, run_overrides, table_lines
from ssl_core.config import ConfigError
from ssl_core.data.splits import ensure_synthetic


def parse_result(stdout: str) -> dict[str, float]:
    """The `key: value` lines that ssl_core.loop prints at the end of a run."""
    result = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep and not key.startswith("step "):
            try:
                result[key] = float(value)
            except ValueError:
                continue
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_grid_arguments(parser)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--parallel", type=int, default=4, help="runs at a time")
    parser.add_argument("--decode-threads", type=int, default=2, help="decode threads per run")
    parser.add_argument("--out", default="bench/out/accuracy_local")
    args = parser.parse_args(argv)
    try:
        spec, chosen, configs = load_grid(args)  # a bad override fails here, before any run starts
        ensure_synthetic(next(iter(configs.values())))  # once, before runs that would race to make it
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base_file = out / "base.yaml"
    base_file.write_text(yaml.safe_dump(spec.base))
    pending = list(configs)
    running: dict[tuple[str, float, int], tuple[subprocess.Popen[str], float]] = {}
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    while pending or running:
        while pending and len(running) < args.parallel:
            key = pending.pop(0)
            name = "{}-f{}-s{}".format(*key)
            cmd = [sys.executable, "-m", "ssl_core.loop", "--config", str(base_file), "--device", args.device,
                   "--decode-threads", str(args.decode_threads)]
            for item in [*args.set, *run_overrides(*key, spec.variants)]:
                cmd += ["--set", item]
            log = (out / f"{name}.log").open("w")
            running[key] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True),
                            time.perf_counter())
        time.sleep(2)
        for key, (proc, began) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[key]
            name = "{}-f{}-s{}".format(*key)
            result = parse_result((out / f"{name}.log").read_text())
            if proc.returncode != 0 or "top1_primary" not in result:
                print(f"{name}: failed (exit {proc.returncode}), see {out / f'{name}.log'}", flush=True)
                continue
            method, fraction, seed = key
            rows.append({"method": method, "fraction": fraction, "seed": seed, "top1": result["top1_primary"],
                         "top5": result["top5_primary"],
                         "mask_rate": result.get("end/pseudo/mask_rate_primary", math.nan),
                         "pseudo_accuracy": result.get("end/pseudo/accuracy_primary", math.nan),
                         "wall_s": time.perf_counter() - began})
            print(f"{name}: top-1 {100 * result['top1_primary']:.1f}% "
                  f"({result.get('train_clips_per_s', math.nan):.0f} clips/s)", flush=True)
            (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    methods = [m for m in chosen if any(r["method"] == m for r in rows)]
    print(f"\n{len(rows)} of {len(configs)} runs in {(time.perf_counter() - start) / 60:.1f} min\n")
    print("\n".join(table_lines(rows, methods, spec.fractions)))
    return 0 if len(rows) == len(configs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
