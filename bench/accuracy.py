"""The results table: top-1 of every method at each labeled fraction and seed, same budget, real workflow.

    python -m bench.accuracy --config configs/bench_accuracy.yaml [--set train.iterations=200] \
        [--methods supervised,fixmatch,cmpl]

A row is an algorithm name or a named variant (`variants:` in the file: an algorithm with overrides, e.g. the
recipe minus one lever for the ablation table, or supervised with all labels for the ceiling row).
Each run goes through workflows.train (Ray Data + Ray Train + MLflow), as a child of one MLflow parent run
tagged `vidssl.bench=accuracy`. Finished runs are kept in `<output.storage>/results.json`, so a stopped
benchmark continues where it stopped (with the same --set overrides only: another budget is refused).
Writes docs/results_table.md and docs/results_top1.png (also in MLflow), both replaced whole by every run; the
hand-written docs/results.md, which links them, is never touched.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssl_core.config import Config, ConfigError, with_overrides

DOCS = Path("docs")
TABLE = DOCS / "results_table.md"


@dataclass
class BenchSpec:
    base: dict[str, Any]
    methods: list[str]
    fractions: list[float]
    seeds: list[int]
    # row name -> overrides applied after the grid's own (must set algorithm.name)
    variants: dict[str, list[str]] = field(default_factory=dict)


def load_spec(path: str | Path) -> BenchSpec:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    for key in ("base", "methods", "labeled_fractions", "seeds"):
        if key not in raw:
            raise ConfigError(f"{key}: missing from {path}")
    unknown = set(raw) - {"base", "methods", "labeled_fractions", "seeds", "variants"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown key in {path}")
    variants = {str(name): [str(item) for item in items] for name, items in (raw.get("variants") or {}).items()}
    for name, items in variants.items():
        if not any(item.startswith("algorithm.name=") for item in items):
            raise ConfigError(f"variants.{name}: must set algorithm.name=... (in {path})")
    return BenchSpec(raw["base"], list(raw["methods"]), [float(f) for f in raw["labeled_fractions"]],
                     [int(s) for s in raw["seeds"]], variants)


def run_overrides(method: str, fraction: float, seed: int, variants: dict[str, list[str]] | None = None) -> list[str]:
    """The grid's overrides for one run; a variant's own come last, so they win (e.g. all labels)."""
    variant = (variants or {}).get(method)
    return [f"algorithm.name={method}" if variant is None else "algorithm.name=supervised",
            f"data.labeled_fraction={fraction}", "data.labeled_per_class=null", f"train.seed={seed}",
            f"data.split_seed={seed}", f"tracking.run_name={method}-f{fraction}-s{seed}", *(variant or [])]


def summarise(rows: list[dict[str, Any]], methods: Sequence[str], fractions: Sequence[float]) -> list[list[str]]:
    """Markdown table rows: method, then mean ± std top-1 per fraction, then end-of-training pseudo-labels."""
    table = []
    for method in methods:
        cells = [method]
        for fraction in fractions:
            top1 = [100 * r["top1"] for r in rows if r["method"] == method and r["fraction"] == fraction]
            if not top1:
                cells.append("—")
                continue
            std = statistics.stdev(top1) if len(top1) > 1 else 0.0
            cells.append(f"{statistics.mean(top1):.1f} ± {std:.1f} (n={len(top1)})")
        for key in ("mask_rate", "pseudo_accuracy"):
            values = [100 * r[key] for r in rows if r["method"] == method and not math.isnan(r[key])]
            cells.append(f"{statistics.mean(values):.1f}" if values else "—")
        table.append(cells)
    return table


def table_lines(rows: list[dict[str, Any]], methods: Sequence[str], fractions: Sequence[float]) -> list[str]:
    """The results table in markdown: header, rule, one line per method."""
    header = ["method", *[f"top-1 % at {100 * f:g}% labels" for f in fractions],
              "mask rate % (end)", "pseudo-label acc % (end)"]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(cells) + " |" for cells in summarise(rows, methods, fractions)]]


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base key")
    parser.add_argument("--methods", help="comma-separated subset of the config's methods")
    parser.add_argument("--fractions", help="comma-separated labeled fractions instead of the config's, e.g. 0.05")
    parser.add_argument("--seeds", help="comma-separated seeds instead of the config's, e.g. 0,1,2")


def load_grid(args: argparse.Namespace) -> tuple[BenchSpec, list[str], dict[tuple[str, float, int], Config]]:
    """The spec, the chosen methods and one validated Config per (method, fraction, seed); ConfigError first."""
    spec = load_spec(args.config)
    try:
        if getattr(args, "fractions", None):
            spec.fractions = [float(f) for f in args.fractions.split(",") if f]
        if getattr(args, "seeds", None):
            spec.seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError as err:
        raise ConfigError(f"--fractions / --seeds: {err}") from err
    chosen = [m for m in args.methods.split(",") if m] if args.methods else spec.methods
    grid = [(m, f, s) for f in spec.fractions for s in spec.seeds for m in chosen]
    return spec, chosen, {key: with_overrides(spec.base, [*args.set, *run_overrides(*key, spec.variants)])
                          for key in grid}


def plot(rows: list[dict[str, Any]], methods: Sequence[str], fractions: Sequence[float], path: Path) -> Any:
    # here: matplotlib takes a second to load; only the report's figure needs it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # here: once the file-only backend is chosen

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in methods:
        xs, ys, es = [], [], []
        for fraction in fractions:
            top1 = [100 * r["top1"] for r in rows if r["method"] == method and r["fraction"] == fraction]
            if top1:
                xs.append(100 * fraction)
                ys.append(statistics.mean(top1))
                es.append(statistics.stdev(top1) if len(top1) > 1 else 0.0)
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
    ax.set_xlabel("labeled videos (%)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("top-1 vs labeled fraction")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


def source_commit() -> str:
    """The commit the benchmark's code is at (`-dirty` with uncommitted changes), or "unknown" outside git."""
    try:
        done = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=30)
    except OSError:
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else "unknown"


def write_report(spec: BenchSpec, rows: list[dict[str, Any]], command: str, wall_s: float) -> Path:
    """docs/results_table.md and its figure, replaced whole: generated files only, no hand-written text."""
    DOCS.mkdir(exist_ok=True)
    png = DOCS / "results_top1.png"
    ran = {r["method"] for r in rows}
    methods = [m for m in spec.methods if m in ran] + sorted(ran - set(spec.methods))
    plot(rows, methods, spec.fractions, png)
    lines = [
        f"# Generated by `{command}`: do not edit, the next run replaces this file",
        "",
        f"Made on {time.strftime('%Y-%m-%d')} at commit {source_commit()}, {platform.machine()} with "
        f"{os.cpu_count()} CPU cores; wall time {wall_s / 60:.1f} min for {len(rows)} runs.",
        "Top-1 of the primary model on the test split (multi-clip), mean ± std over seeds (each seed also draws",
        "its own labeled subset). Mask rate and pseudo-label accuracy are the last logged window of training,",
        "averaged over runs (supervised has none). Every run is in MLflow, experiment "
        f"`{spec.base.get('tracking', {}).get('experiment', 'vidssl')}`, under one parent run.",
        "What the numbers mean, and the current results by question: [results.md](results.md).",
        "",
        *table_lines(rows, methods, spec.fractions),
        "",
        f"![top-1 vs labeled fraction]({png.name})",
        "",
    ]
    TABLE.write_text("\n".join(lines))
    return TABLE


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_grid_arguments(parser)
    args = parser.parse_args(argv)
    # here: Ray and MLflow take seconds to load; the unit tests import this module for its grid and summary
    from workflows.runtime.ray_session import init_ray
    from workflows.runtime.training import run_training
    from workflows.tracking.tracker import Tracker, resolve_uri

    try:
        spec, _, configs = load_grid(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    first = next(iter(configs.values()))
    storage = Path(first.output.storage)
    storage.mkdir(parents=True, exist_ok=True)
    results_file = storage / "results.json"
    state = json.loads(results_file.read_text()) if results_file.exists() else {"rows": [], "parent": None}
    # Finished runs only count towards this table if they were made with the same base overrides (budget).
    made_with = state.setdefault("overrides", list(args.set))
    if made_with != list(args.set):
        print(f"error: {results_file} holds runs made with --set {made_with}, not {list(args.set)}: pass the same "
              "--set, or give this table its own output.storage", file=sys.stderr)
        return 2
    uri = resolve_uri(first.tracking.uri)
    parent = (Tracker(uri, state["parent"]) if state["parent"]
              else Tracker.start(uri, first.tracking.experiment, "bench-accuracy", {"vidssl.bench": "accuracy"}))
    state["parent"] = parent.run_id
    done = {(r["method"], r["fraction"], r["seed"]) for r in state["rows"]}
    command = "python -m bench.accuracy " + " ".join(argv if argv is not None else sys.argv[1:])
    init_ray()
    for key, cfg in configs.items():
        if key in done:
            continue
        method, fraction, seed = key
        tags = {"mlflow.parentRunId": parent.run_id, "vidssl.bench": "accuracy", "vidssl.seed": str(seed)}
        run_start = time.perf_counter()
        outcome = run_training(cfg, extra_tags=tags)
        m = outcome.metrics
        state["rows"].append({
            "method": method, "fraction": fraction, "seed": seed, "run_id": outcome.mlflow_run_id,
            "top1": m["eval/top1_primary"], "top5": m["eval/top5_primary"],
            "mask_rate": m.get("pseudo/mask_rate_primary", math.nan),
            "pseudo_accuracy": m.get("pseudo/accuracy_primary", math.nan),
            "wall_s": time.perf_counter() - run_start,
        })
        results_file.write_text(json.dumps(state, indent=1))
        print(f"{method} f={fraction} seed={seed}: top-1 {100 * m['eval/top1_primary']:.1f}%", flush=True)
        # Rewritten after every run so that a stopped benchmark still leaves its table so far.
        write_report(spec, state["rows"], command, sum(r["wall_s"] for r in state["rows"]))
    report = write_report(spec, state["rows"], command, sum(r["wall_s"] for r in state["rows"]))
    parent.log_artifact(report)
    parent.log_artifact(DOCS / "results_top1.png")
    parent.log_artifact(results_file)
    parent.finish()
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
