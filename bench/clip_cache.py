"""Decoded-clip cache vs decoding from the file: the same training clips (same videos, same seeds), side by side.

    python -m bench.clip_cache                      # data/synth (800 videos), ~1 min on 2 cores
    python -m bench.clip_cache --root data/synth --size 72 --frames 8 --stride 2 --clips 400

Steps, in one process:
  estimate  the cache's size from stream metadata (what data.cache=auto checks against data.cache_budget_gb);
  build     every video decoded once into a fresh cache (a temporary folder unless --cache-dir), `--workers`
            threads: the one-off cost a run pays before its first step;
  decode    `--clips` clips with ssl_core.data.decode.decode_clip (threads=1, as a Ray decode task), one thread;
  cache     the same clips with ClipCache.decode_clip, one thread; every clip checked equal to the decoded one.
Then `break_even_clips`: after how many clips the build has paid for itself (build_s / saved s per clip).

The last line is the figure: `decode_clips_per_s=<a> cache_clips_per_s=<b> speedup=<b / a> build_s=<s>`.
Results also go to bench/out/clip_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ssl_core.data.clip_cache import build_cache, estimate_bytes
from ssl_core.data.decode import decode_clip
from ssl_core.data.manifest import load_manifest

OUT = Path("bench/out")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data/synth", help="csv dataset (manifest.csv)")
    parser.add_argument("--size", type=int, default=72, help="data.size")
    parser.add_argument("--frames", type=int, default=8, help="data.num_frames")
    parser.add_argument("--stride", type=int, default=2, help="data.stride")
    parser.add_argument("--clips", type=int, default=400, help="clips per contestant")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="build threads")
    parser.add_argument("--cache-dir", default=None, help="cache root (default: a fresh temporary folder)")
    args = parser.parse_args(argv)

    paths = [r.path for r in load_manifest("csv", Path(args.root)).records]
    rng = np.random.default_rng(0)
    chosen = [(paths[int(i)], int(s)) for i, s in zip(rng.integers(0, len(paths), args.clips),
                                                      rng.integers(0, 2**63, args.clips), strict=True)]
    opts = {"num_frames": args.frames, "stride": args.stride, "size": args.size}
    print(f"{len(paths)} videos in {args.root}; clips of {args.frames} frames, stride {args.stride}, "
          f"{args.size} px; load average {os.getloadavg()[0]:.1f}", flush=True)

    start = time.perf_counter()
    estimate = estimate_bytes(paths, args.size, workers=args.workers)
    estimate_s = time.perf_counter() - start
    print(f"estimate: {estimate / 1e6:.1f} MB in {estimate_s:.2f} s", flush=True)

    with tempfile.TemporaryDirectory(prefix="clip_cache_bench_") as tmp:
        start = time.perf_counter()
        cache = build_cache(paths, args.size, args.cache_dir or tmp, workers=args.workers)
        build_s = time.perf_counter() - start
        print(f"build: {'built' if cache.built else 'reused'} {cache.nbytes / 1e6:.1f} MB in {build_s:.1f} s "
              f"({args.workers} threads), {len(cache.unreadable)} unreadable", flush=True)

        start = time.perf_counter()
        decoded = [decode_clip(p, rng=np.random.default_rng(s), threads=1, **opts) for p, s in chosen]
        decode_s = time.perf_counter() - start
        start = time.perf_counter()
        cached = [cache.decode_clip(p, rng=np.random.default_rng(s), threads=1, **opts) for p, s in chosen]
        cache_s = time.perf_counter() - start
        equal = all(np.array_equal(a, b) for a, b in zip(decoded, cached, strict=True))

    decode_rate, cache_rate = args.clips / decode_s, args.clips / cache_s
    saved_per_clip = 1 / decode_rate - 1 / cache_rate
    result = {
        "videos": len(paths), "clips": args.clips, "size": args.size, "frames": args.frames, "stride": args.stride,
        "estimate_mb": estimate / 1e6, "estimate_s": estimate_s, "cache_mb": cache.nbytes / 1e6,
        "build_s": build_s, "build_workers": args.workers, "decode_clips_per_s": decode_rate,
        "cache_clips_per_s": cache_rate, "speedup": cache_rate / decode_rate, "clips_equal": equal,
        "break_even_clips": build_s / saved_per_clip if saved_per_clip > 0 else None,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "clip_cache.json").write_text(json.dumps(result, indent=2))
    print(f"same clips as the decoder: {equal}; the build pays for itself after "
          f"~{result['break_even_clips'] or float('inf'):.0f} clips")
    print(f"decode_clips_per_s={decode_rate:.1f} cache_clips_per_s={cache_rate:.1f} "
          f"speedup={cache_rate / decode_rate:.1f} build_s={build_s:.1f}")


if __name__ == "__main__":
    main()
