"""Active learning benchmark: does labeling the label queue's top N beat labeling N random videos?

    python -m bench.label_queue --config configs/bench_label_queue.yaml [--quick]

Per seed, on the synthetic set of the config's `base` (generated on first use), all through the real
workflow (workflows.runtime.training.run_training: Ray Data + Ray Train + MLflow, runs tagged vidssl.bench=label_queue,
vidssl.arm=initial|random|queue, vidssl.seed, children of one parent run):
  1. train an initial model on `initial_per_class` labeled videos per class;
  2. rank the rest of the train split with the label queue (workflows.label_queue, `strategy`) and take its
     top `budget`; draw `budget` random videos (seeded) as the baseline;
  3. label both with the manifest's labels (the simulated annotator) and write the two split files;
  4. train both arms from scratch with the same config, iterations and seed;
  5. compare their top-1 on the test split.
Prints the table (also bench/out/label_queue.md and in MLflow); the last line is
`queue_minus_random=<mean top-1 points>`. --quick runs the config's `quick` variant (fewer seeds and
iterations) to check the wiring in a few minutes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ssl_core.config import Config, ConfigError, with_overrides
from ssl_core.data.manifest import load_manifest, write_split_file
from ssl_core.data.splits import prepare_data
from workflows import label_queue as lq
from workflows.runtime.inference import load_for_inference
from workflows.runtime.training import run_training
from workflows.tracking.tracker import Tracker, resolve_uri

OUT = Path("bench/out")
ARMS: tuple[str, ...] = ("initial", "random", "queue")
SPEC_KEYS = {"base", "initial_per_class", "budget", "strategy", "clips", "seeds", "quick"}


@dataclass
class BenchSpec:
    base: dict[str, Any]
    initial_per_class: int
    budget: int
    strategy: str  # margin | entropy: the benchmark trains one model, so no disagreement
    clips: int  # views per candidate when ranking
    seeds: list[int]
    overrides: list[str]  # `key=value` on top of base (the quick variant's)


def load_spec(path: str | Path, quick: bool) -> BenchSpec:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown key in {path}; known: {sorted(SPEC_KEYS)}")
    missing = SPEC_KEYS - {"quick"} - set(raw)
    if missing:
        raise ConfigError(f"{sorted(missing)[0]}: missing from {path}")
    variant = (raw.get("quick") or {}) if quick else {}
    if raw["strategy"] not in ("margin", "entropy"):
        raise ConfigError(f"strategy: margin or entropy (one model per seed), got {raw['strategy']!r}")
    merged = {**raw, **variant}  # the quick variant may replace budget, clips, seeds and add `set`
    return BenchSpec(raw["base"], int(raw["initial_per_class"]), int(merged["budget"]), raw["strategy"],
                     int(merged["clips"]), [int(s) for s in merged["seeds"]], [str(s) for s in variant.get("set", [])])


def arm_config(spec: BenchSpec, seed: int, arm: str, split_file: Path, tag: str) -> Config:
    """The same training config for every arm of a seed; only the labeled split file differs."""
    return with_overrides(spec.base, [
        *spec.overrides, f"data.labeled_per_class={spec.initial_per_class}", "data.labeled_fraction=null",
        f"data.labeled_split_file={split_file}", f"data.split_seed={seed}", f"train.seed={seed}",
        f"tracking.run_name=lq-{tag}-s{seed}-{arm}",
    ])


def pick_queue(cfg: Config, model_uri: str, tracking_uri: str, spec: BenchSpec
               ) -> tuple[list[str], list[str], str, float]:
    """Rank the unlabeled train videos with the initial model: (candidates, top `budget`, the queue CSV,
    the model's accuracy on those picks against the manifest)."""
    data = prepare_data(cfg, None)  # reads the initial split file the initial run wrote
    loaded = load_for_inference(model_uri, tracking_uri)
    candidates = sorted(r.path for r in data.unlabeled)
    options = {"clips": spec.clips, "crops": 1, "batch_size": 4, "decode_cpus": 0.5, "actors": None}
    scores, skipped = lq.score_candidates(candidates, loaded, None, options)
    if skipped:
        raise RuntimeError(f"unreadable synthetic videos: {sorted(skipped)}")
    rows = lq.queue_rows(scores, lq.rank(scores, spec.strategy), loaded.classes, spec.budget)
    truth = {r.path: data.manifest.classes[r.label] for r in data.unlabeled}
    agree = statistics.mean(row["suggested_label"] == truth[row["path"]] for row in rows)
    return candidates, [row["path"] for row in rows], lq.queue_csv(rows, with_aux=False), agree


def write_arm_split(path: Path, cfg: Config, added: Sequence[str]) -> None:
    """Initial labels + `added` videos labeled from the manifest (the simulated annotator)."""
    data = prepare_data(cfg, None)
    by_path = {r.path: r for r in data.unlabeled}
    write_split_file(path, [*data.labeled, *(by_path[p] for p in added)], data.manifest, Path(cfg.data.root))


def run_seed(spec: BenchSpec, seed: int, folder: Path, tag: str, parent: Any) -> dict[str, Any]:
    folder.mkdir(parents=True)
    tags = {"mlflow.parentRunId": parent.run_id, "vidssl.bench": "label_queue", "vidssl.seed": str(seed)}
    row: dict[str, Any] = {"seed": seed}

    def train(arm: str, split_file: Path) -> Any:
        outcome = run_training(arm_config(spec, seed, arm, split_file, tag), extra_tags={**tags, "vidssl.arm": arm})
        row[arm] = 100 * float(outcome.metrics["eval/top1_primary"])
        print(f"seed {seed} {arm}: top-1 {row[arm]:.1f}% (MLflow run {outcome.mlflow_run_id})", flush=True)
        return outcome

    initial_split = folder / "split_initial.csv"
    initial = train("initial", initial_split)  # writes the class-balanced initial split to initial_split
    cfg = arm_config(spec, seed, "initial", initial_split, tag)
    candidates, queued, queue_text, agree = pick_queue(cfg, initial.model_uri, initial.tracking_uri, spec)
    (folder / "queue.csv").write_text(queue_text)
    parent.log_artifact(folder / "queue.csv", f"seed{seed}")
    randomly = sorted(np.random.default_rng(seed).choice(candidates, size=len(queued), replace=False).tolist())
    for arm, added in (("random", randomly), ("queue", queued)):
        split = folder / f"split_{arm}.csv"
        write_arm_split(split, cfg, added)
        train(arm, split)
    row["queue_suggestion_accuracy"] = 100 * agree
    return row


def _mean_std(values: Sequence[float], sign: str = "") -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):{sign}.1f} ± {std:.1f}"


def table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    header = ["seed", "initial", "+random", "+queue", "queue − random", "initial model right on queued %"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['initial']:.1f} | {r['random']:.1f} | {r['queue']:.1f} | "
                     f"{r['queue'] - r['random']:+.1f} | {r['queue_suggestion_accuracy']:.0f} |")
    means = [_mean_std([r[arm] for r in rows]) for arm in ARMS]
    diff = _mean_std([r["queue"] - r["random"] for r in rows], sign="+")
    right = statistics.mean(r["queue_suggestion_accuracy"] for r in rows)
    lines.append(f"| mean ± std | {' | '.join(means)} | {diff} | {right:.0f} |")
    return lines


def report(spec: BenchSpec, rows: Sequence[Mapping[str, Any]], command: str, wall_s: float) -> str:
    cfg = with_overrides(spec.base, spec.overrides)
    syn, t, d = cfg.data.synthetic, cfg.train, cfg.data
    manifest = load_manifest(d.layout, d.root, csv_path=d.csv_path, ucf_split=d.ucf_split,
                             test_fraction=d.test_fraction, seed=d.split_seed, infer_classes=d.infer_classes)
    num_test = len(manifest.split("test"))
    return "\n".join([
        "# Label queue vs random labels (synthetic action set)",
        "",
        f"Made by `{command}` on {time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()} with {os.cpu_count()} "
        f"CPU cores; wall time {wall_s / 60:.1f} min.",
        f"{syn.classes} classes x {syn.videos_per_class} videos ({cfg.data.root}); {cfg.algorithm.name} "
        f"{cfg.model.primary}, {t.iterations} iterations of batch {t.batch_size} per run. Each seed: an initial "
        f"model on {spec.initial_per_class} labeled videos/class, then +{spec.budget} labels chosen by the label "
        f"queue (strategy {spec.strategy}, {spec.clips} clips/video) or at random, each arm retrained from "
        f"scratch with the same seed and budget. Test top-1 % of the primary model ({num_test} test videos: one "
        f"video = {100 / num_test:.2f} points, {d.eval_clips} clips each).",
        "The last column: how often the initial model's suggested label was right on the queued videos.",
        "",
        *table(rows),
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--quick", action="store_true", help="the config's quick variant: check the wiring")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    tag = time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "")
    try:
        spec = load_spec(args.config, args.quick)
        first = with_overrides(spec.base, spec.overrides)
        folder = Path(first.output.storage) / f"label_queue-{tag}"
        for seed in spec.seeds:  # every arm's config is checked before the first run starts
            arm_config(spec, seed, "initial", folder / f"seed{seed}" / "split_initial.csv", tag)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    parent = Tracker.start(resolve_uri(first.tracking.uri), first.tracking.experiment, f"bench-label-queue-{tag}",
                           {"vidssl.bench": "label_queue"})
    try:
        rows = [run_seed(spec, seed, folder / f"seed{seed}", tag, parent) for seed in spec.seeds]
    except BaseException:
        parent.finish("FAILED")
        raise
    command = "python -m bench.label_queue " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(spec, rows, command, time.perf_counter() - start)
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / "label_queue.md"
    out.write_text(text)
    diff = statistics.mean(r["queue"] - r["random"] for r in rows)
    parent.log_artifact(out)
    parent.log_metrics({"top1_initial": statistics.mean(r["initial"] for r in rows),
                        "top1_random": statistics.mean(r["random"] for r in rows),
                        "top1_queue": statistics.mean(r["queue"] for r in rows), "queue_minus_random": diff}, step=0)
    parent.finish()
    print()
    print(text)
    print(f"report: {out}; split files and queues: {folder}")
    print(f"queue_minus_random={diff:+.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
