"""Active-learning label queue: rank unlabeled videos for human annotation by model uncertainty.

    python -m workflows.label_queue --model models:/vidssl-demo-primary/latest --videos configs/demo.yaml \
        --budget 50 --out queue.csv
    python -m workflows.label_queue --model runs/cmpl-20250101-120000 \
        --aux-model runs/cmpl-20250101-120000#auxiliary --videos data/new_videos \
        --exclude runs/cmpl-20250101-120000/labeled_split.csv --budget 50 --out queue.csv [--overwrite]

Candidates (--videos): a folder (every video under it), a CSV with a path column, or a training config (the
train split of its dataset minus the videos of its `data.labeled_split_file` when that file exists). Each
--exclude CSV (any CSV with a path column: a labeled split file, an earlier queue) removes videos that are
already labeled. Rule for its relative paths: a path is excluded when it matches relative to the CSV's own folder
OR relative to the dataset root (the --videos folder, the --videos CSV's folder, or the config's
data.root), so both a listing next to its videos and a split file (relative to data.root) work.

Every candidate is scored through the Ray Data pipeline of workflows.runtime.inference (--clips x --crops views,
softmax averaged). Scores: `margin` = p(top1) - p(top2) (low: uncertain), `entropy` normalised by log(C)
(in [0, 1]); with --aux-model (e.g. CMPL's auxiliary, same class list) also `disagreement`, the
Jensen-Shannon divergence in bits (in [0, 1]) between the two models' probabilities, and `models_disagree`
(their top classes differ). --strategy auto ranks by disagreement when --aux-model is given, else by margin:
    margin        margin ascending
    entropy       entropy descending
    disagreement  models_disagree first, then disagreement descending, then the primary's margin ascending
with ties broken by path. The top --budget videos go to --out, a CSV for an annotation tool:
rank,path,suggested_label,confidence,margin,entropy[,aux_label,aux_confidence,disagreement,models_disagree]
(absolute paths, class names), written atomically; an existing --out is kept unless --overwrite. Unreadable
videos are skipped, counted and listed, never queued. The queue is also one MLflow run in --experiment:
params, counts, the mean margin of the queue against all candidates, the CSV (label_queue.csv) and
skipped_videos.tsv, tagged with the model(s) it used.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssl_core.config import load_config
from ssl_core.data.manifest import load_manifest, read_split_file
from ssl_core.user_errors import reports_user_errors, unreadable_split
from workflows.console import terminal
from workflows.predict import InputError, csv_path_column, list_videos
from workflows.runtime.inference import (
    InferenceError,
    InferenceModel,
    add_scoring_args,
    load_for_inference,
    score_videos,
)
from workflows.runtime.ray_session import init_ray

STRATEGIES: tuple[str, ...] = ("auto", "margin", "entropy", "disagreement")
COLUMNS: tuple[str, ...] = ("rank", "path", "suggested_label", "confidence", "margin", "entropy")
AUX_COLUMNS: tuple[str, ...] = ("aux_label", "aux_confidence", "disagreement", "models_disagree")
SHOWN_ROWS = 5


# --- scores: (N, C) probability rows -> one number per video ------------------------------------------------


def margin(probs: np.ndarray) -> np.ndarray:
    """p(top1) - p(top2) per row (C >= 2): near 0 when the model hesitates between two classes."""
    top2 = np.sort(np.asarray(probs, np.float64), axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy / log(C) per row, in [0, 1] whatever the class count: 1 = uniform."""
    p = np.asarray(probs, np.float64)
    terms = -p * np.log(np.where(p > 0, p, 1.0))  # 0 log 0 = 0
    return np.clip(terms.sum(axis=1) / np.log(p.shape[1]), 0.0, 1.0)


def _kl_bits(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    safe = p > 0
    ratio = np.where(safe, p, 1.0) / np.where(safe, q, 1.0)
    return (p * np.log2(ratio)).sum(axis=1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence per row pair in bits: 0 = same distribution, 1 = disjoint supports."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = (p + q) / 2  # > 0 wherever p or q is, so the KL terms stay finite
    return np.clip((_kl_bits(p, m) + _kl_bits(q, m)) / 2, 0.0, 1.0)


def models_disagree(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """True where the two models' top classes differ."""
    return np.argmax(p, axis=1) != np.argmax(q, axis=1)


@dataclass(frozen=True)
class Scores:
    """The scores of scored (readable) candidates, rows aligned with `paths`."""

    paths: list[str]
    probs: np.ndarray  # (N, C) of --model
    aux_probs: np.ndarray | None  # (N, C) of --aux-model
    margin: np.ndarray
    entropy: np.ndarray
    disagreement: np.ndarray | None
    disagree: np.ndarray | None

    @classmethod
    def of(cls, paths: Sequence[str], probs: np.ndarray, aux_probs: np.ndarray | None = None) -> Scores:
        with_aux = aux_probs is not None
        return cls(list(paths), probs, aux_probs, margin(probs), normalized_entropy(probs),
                   js_divergence(probs, aux_probs) if with_aux else None,
                   models_disagree(probs, aux_probs) if with_aux else None)


def resolve_strategy(strategy: str, with_aux: bool) -> str:
    if strategy == "auto":
        return "disagreement" if with_aux else "margin"
    if strategy == "disagreement" and not with_aux:
        raise InputError("--strategy disagreement compares two models: give --aux-model too")
    return strategy


def rank(scores: Scores, strategy: str) -> list[int]:
    """Candidate indices, most worth labeling first (see the module docstring); ties broken by path, so a
    queue is reproducible whatever order the pipeline returned the videos in."""
    if strategy == "margin":
        keys: list[list[Any]] = [scores.margin.tolist()]
    elif strategy == "entropy":
        keys = [(-scores.entropy).tolist()]
    elif strategy == "disagreement":
        if scores.disagreement is None or scores.disagree is None:
            raise ValueError("disagreement ranking needs the auxiliary model's probabilities")
        keys = [(~scores.disagree).tolist(), (-scores.disagreement).tolist(), scores.margin.tolist()]
    else:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES[1:]}")
    return sorted(range(len(scores.paths)), key=lambda i: (*(k[i] for k in keys), scores.paths[i]))


def queue_rows(scores: Scores, order: Sequence[int], classes: Sequence[str], budget: int) -> list[dict[str, str]]:
    """The first `budget` candidates of `order` as CSV rows (COLUMNS, + AUX_COLUMNS with an aux model)."""
    rows = []
    for position, i in enumerate(order[:budget], start=1):
        p = scores.probs[i]
        row = {"rank": str(position), "path": scores.paths[i], "suggested_label": classes[int(np.argmax(p))],
               "confidence": f"{float(p.max()):.6f}", "margin": f"{scores.margin[i]:.6f}",
               "entropy": f"{scores.entropy[i]:.6f}"}
        if scores.aux_probs is not None and scores.disagreement is not None and scores.disagree is not None:
            q = scores.aux_probs[i]
            row |= {"aux_label": classes[int(np.argmax(q))], "aux_confidence": f"{float(q.max()):.6f}",
                    "disagreement": f"{scores.disagreement[i]:.6f}",
                    "models_disagree": "true" if scores.disagree[i] else "false"}
        rows.append(row)
    return rows


# --- candidates -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidates:
    paths: list[str]  # absolute, normalised, sorted
    root: Path  # the dataset root relative --exclude paths may also be relative to
    excluded: int  # videos of --videos removed as already labeled


def _from_config(path: str) -> tuple[list[str], Path, set[str]]:
    """A training config -> its train split and the videos of its labeled split file (if written yet)."""
    d = load_config(path).data
    root = Path(d.root).expanduser().resolve()
    manifest = load_manifest(d.layout, root, csv_path=d.csv_path, ucf_split=d.ucf_split,
                             test_fraction=d.test_fraction, seed=d.split_seed, infer_classes=d.infer_classes)
    split_file = Path(d.labeled_split_file) if d.labeled_split_file else None
    labeled = read_split_file(split_file, manifest, root) if split_file and split_file.exists() else []
    return [r.path for r in manifest.split("train")], root, {r.path for r in labeled}


def read_excluded(csv_path: str, root: Path) -> set[str]:
    """Absolute paths an --exclude CSV names: each relative path both against its folder and against `root`."""
    source = Path(csv_path).expanduser().resolve()
    if not source.is_file():
        raise InputError(f"--exclude {csv_path}: no such file")
    try:
        listed = csv_path_column(source)
    except InputError as err:
        raise InputError(f"--exclude {err}") from err
    return {os.path.normpath(base / p) for p in listed for base in (source.parent, root)}


def collect_candidates(videos: str, exclude: Iterable[str]) -> Candidates:
    source = Path(videos).expanduser()
    if source.suffix.lower() in (".yaml", ".yml"):
        paths, root, labeled = _from_config(videos)
    else:
        paths, labeled = list_videos(videos), set()
        resolved = source.resolve()
        root = resolved if resolved.is_dir() else resolved.parent
    for csv_path in exclude:
        labeled |= read_excluded(csv_path, root)
    paths = sorted({os.path.normpath(p) for p in paths})
    kept = [p for p in paths if p not in labeled]
    if not kept:
        raise InputError(f"--videos {videos}: no candidates left after removing {len(paths)} labeled videos")
    return Candidates(kept, root, len(paths) - len(kept))


# --- scoring ----------------------------------------------------------------------------------------------


def check_same_classes(model: InferenceModel, aux: InferenceModel) -> None:
    if model.classes != aux.classes:
        raise InputError(
            f"--aux-model {aux.source['spec']} has classes {aux.classes} but --model {model.source['spec']} has "
            f"{model.classes}: the two models must share one class list (same names, same order)"
        )


def _probs_by_path(paths: Sequence[str], loaded: InferenceModel, options: Mapping[str, Any],
                   skipped: dict[str, str]) -> dict[str, np.ndarray]:
    """Run one model's scoring pipeline; unreadable videos go to `skipped` (path -> error)."""
    ds = score_videos([{"path": p, "label": -1} for p in paths], loaded, **options)
    probs = {}
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        for path, p, error in zip(batch["path"], batch["probs"], batch["error"], strict=True):
            if error:
                skipped[str(path)] = str(error)
            else:
                probs[str(path)] = p
    return probs


def score_candidates(paths: Sequence[str], model: InferenceModel, aux: InferenceModel | None,
                     options: Mapping[str, Any]) -> tuple[Scores, dict[str, str]]:
    """Scores of the readable candidates and {unreadable path: error}. `options`: score_videos' keywords
    (clips, crops, batch_size, decode_cpus, actors). Each model decodes at its own clip shape."""
    init_ray()
    skipped: dict[str, str] = {}
    probs = _probs_by_path(paths, model, options, skipped)
    aux_probs = _probs_by_path(paths, aux, options, skipped) if aux is not None else None
    ok = [p for p in paths if p not in skipped]
    num_classes = len(model.classes)

    def stack(by_path: dict[str, np.ndarray]) -> np.ndarray:
        return np.array([by_path[p] for p in ok], np.float64).reshape(-1, num_classes)

    return Scores.of(ok, stack(probs), stack(aux_probs) if aux_probs is not None else None), skipped


# --- output -----------------------------------------------------------------------------------------------


def check_out(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; name a .csv file")
    if out.exists() and not overwrite:
        raise InputError(f"--out {out} exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise InputError(f"--out {out}: folder {out.parent} does not exist")


def queue_csv(rows: Sequence[Mapping[str, str]], with_aux: bool) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*COLUMNS, *(AUX_COLUMNS if with_aux else ())], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_atomic(out: Path, text: str, overwrite: bool) -> None:
    """A temporary file renamed into place: an annotation tool never reads half a queue."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    if out.exists() and not overwrite:  # it appeared while we scored: still not ours to replace
        raise InputError(f"{out} appeared while ranking; the queue is in {tmp}")
    os.replace(tmp, out)


def summary_metrics(scores: Scores, order: Sequence[int], budget: int, candidates: Candidates,
                    skipped: Mapping[str, str]) -> dict[str, float]:
    """Counts, and mean scores of the queue against all scored candidates (at least one)."""
    queued = list(order[:budget])
    metrics = {"candidates": float(len(candidates.paths)), "excluded": float(candidates.excluded),
               "skipped": float(len(skipped)), "queued": float(len(queued)),
               "mean_margin_queued": float(scores.margin[queued].mean()),
               "mean_margin_all": float(scores.margin.mean()),
               "mean_entropy_queued": float(scores.entropy[queued].mean()),
               "mean_entropy_all": float(scores.entropy.mean())}
    if scores.disagreement is not None and scores.disagree is not None:
        metrics |= {"mean_disagreement_queued": float(scores.disagreement[queued].mean()),
                    "mean_disagreement_all": float(scores.disagreement.mean()),
                    "disagree_fraction_queued": float(scores.disagree[queued].mean()),
                    "disagree_fraction_all": float(scores.disagree.mean())}
    return metrics


def _model_tags(prefix: str, loaded: InferenceModel) -> dict[str, str]:
    src = loaded.source
    tags = {f"{prefix}": src["spec"], f"{prefix}_uri": src["uri"], f"{prefix}_name": src["name"],
            f"{prefix}_version": src["version"], f"{prefix}_id": src["model_id"],
            f"{prefix}_training_run": src["run_id"], f"{prefix}_checkpoint": src["checkpoint"]}
    return {k: str(v) for k, v in tags.items() if v is not None}


def log_queue_run(args: argparse.Namespace, strategy: str, model: InferenceModel, aux: InferenceModel | None,
                  text: str, metrics: Mapping[str, float], skipped: Mapping[str, str], tracking_uri: str) -> str:
    """One MLflow run for this queue; returns its id."""
    # here: MLflow (seconds to load) is imported once terminal.session has told it to leave the console alone
    from workflows.tracking.tracker import Tracker

    tags = {**_model_tags("vidssl.model", model), **(_model_tags("vidssl.aux_model", aux) if aux else {}),
            "vidssl.videos": args.videos, "vidssl.strategy": strategy}
    tracker = Tracker.start(tracking_uri, args.experiment, f"label-queue-{strategy}", tags)
    try:
        tracker.log_params({"model": args.model, "aux_model": args.aux_model, "videos": args.videos,
                            "exclude": ",".join(args.exclude), "strategy": strategy, "budget": args.budget,
                            "clips": args.clips, "crops": args.crops, "out": str(args.out)})
        tracker.log_metrics(metrics, step=0)
        tracker.log_text(text, "label_queue.csv")
        if skipped:
            tracker.log_text("".join(f"{p}\t{e}\n" for p, e in sorted(skipped.items())), "skipped_videos.tsv")
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return tracker.run_id


def print_summary(rows: Sequence[Mapping[str, str]], metrics: Mapping[str, float], skipped: Mapping[str, str],
                  out: Path) -> None:
    print()
    for path, error in sorted(skipped.items()):
        print(f"skipped (unreadable): {path}: {error}")
    print(f"{int(metrics['candidates'])} candidates ({int(metrics['excluded'])} already labeled left out), "
          f"{int(metrics['skipped'])} unreadable skipped, {int(metrics['queued'])} queued -> {out}")
    print(f"mean margin: queued {metrics['mean_margin_queued']:.3f}, all candidates {metrics['mean_margin_all']:.3f}")
    scored = [c for c in ("margin", "entropy", "disagreement") if c in rows[0]]
    print(f"{'rank':>5} " + " ".join(f"{c:>12}" for c in scored) + "  suggested_label  path")
    for row in rows[:SHOWN_ROWS]:
        values = " ".join(f"{float(row[c]):>12.3f}" for c in scored)
        print(f"{row['rank']:>5} {values}  {row['suggested_label']:<15}  {row['path']}")


# --- command ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidssl label-queue", description=__doc__.splitlines()[0])
    add_scoring_args(parser, clips=4, crops=1, clips_help="uniformly spaced clips per video (default 4)")
    parser.add_argument("--aux-model", metavar="SPEC",
                        help="a second model with the same class list (e.g. RUN_FOLDER#auxiliary, CMPL's "
                             "auxiliary): adds disagreement scores")
    parser.add_argument("--videos", required=True, metavar="DIR|CSV|CONFIG.yaml",
                        help="candidates: a folder, a CSV with a path column (relative to the CSV), or a "
                             "training config (its train split minus its data.labeled_split_file)")
    parser.add_argument("--exclude", action="append", default=[], metavar="CSV",
                        help="already labeled videos (a CSV with a path column, e.g. a labeled split file; "
                             "relative paths match against its folder or the dataset root); repeatable")
    parser.add_argument("--budget", type=int, required=True, metavar="N", help="videos to queue (>= 1)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="auto (default): disagreement with --aux-model, else margin")
    parser.add_argument("--out", required=True, metavar="FILE.csv")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--experiment", default="vidssl-label-queue", help="MLflow experiment")
    parser.add_argument("--verbose", action="store_true",
                        help="also print what Ray, Ray Data and MLflow log")
    return parser


def _prepare(args: argparse.Namespace, out: Path
             ) -> tuple[str, Candidates, InferenceModel, InferenceModel | None]:
    """Everything that can be checked before Ray starts; raises InputError and friends."""
    if args.budget < 1:
        raise InputError(f"--budget must be >= 1, got {args.budget}")
    if min(args.clips, args.crops, args.batch_size) < 1:
        raise InputError("--clips, --crops and --batch-size must be >= 1")
    strategy = resolve_strategy(args.strategy, args.aux_model is not None)
    check_out(out, args.overwrite)
    candidates = collect_candidates(args.videos, args.exclude)
    model = load_for_inference(args.model, args.tracking_uri, trust_pickle=args.trust_pickle)
    aux = (load_for_inference(args.aux_model, args.tracking_uri, trust_pickle=args.trust_pickle) if args.aux_model
           else None)
    if aux is not None:
        check_same_classes(model, aux)
    return strategy, candidates, model, aux


@reports_user_errors(InferenceError)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with terminal.session(args.verbose):
        # here: MLflow (seconds to load) is imported once terminal.session has told it to leave the console alone
        from workflows.tracking.tracker import resolve_uri, ui_command

        tracking_uri = resolve_uri(args.tracking_uri)
        args.tracking_uri = tracking_uri  # the models and the queue's run share one store
        out = Path(args.out).expanduser().resolve()
        strategy, candidates, model, aux = _prepare(args, out)
        options = {"clips": args.clips, "crops": args.crops, "batch_size": args.batch_size,
                   "decode_cpus": args.decode_cpus, "actors": args.actors}
        scores, skipped = score_candidates(candidates.paths, model, aux, options)
        if not scores.paths:
            raise unreadable_split("candidates", skipped, len(skipped))
        order = rank(scores, strategy)
        rows = queue_rows(scores, order, model.classes, args.budget)
        text = queue_csv(rows, aux is not None)
        write_atomic(out, text, args.overwrite)
        metrics = summary_metrics(scores, order, args.budget, candidates, skipped)
        run_id = log_queue_run(args, strategy, model, aux, text, metrics, skipped, tracking_uri)
        print_summary(rows, metrics, skipped, out)
        print(f"strategy {strategy}; MLflow run: {run_id} (experiment {args.experiment}); review it: "
              f"{ui_command(tracking_uri)}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
