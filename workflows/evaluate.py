"""Evaluate a trained model on a labeled video set with the multi-clip x multi-crop protocol, logged to MLflow.

    python -m workflows.evaluate --model models:/vidssl-demo-primary/latest --data configs/demo.yaml
    python -m workflows.evaluate --model runs/cmpl-20250101-120000 --data data/ucf/test.csv --clips 10 --crops 3

Per video the softmax is averaged over `--clips` uniformly spaced clips x `--crops` square crops along the
long side (10 x 3 is the usual published protocol). The result is an MLflow run in `--experiment`: top-1,
top-5 and mean per-class accuracy (linked to the MLflow LoggedModel when the model came from MLflow), a
per-class CSV, the confusion matrix PNG and the list of unreadable videos, with tags naming the model, its
registered version and its training run. The registered model version gets the tag
`vidssl.evaluation_run` pointing back at this run.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ssl_core.config import ConfigError, load_config
from ssl_core.data.manifest import SPLITS, Manifest, ManifestError, VideoRecord, load_manifest
from ssl_core.evaluate import EvalCounts
from ssl_core.user_errors import read_text, reports_user_errors, skipped_videos_line, unreadable_split
from workflows.console import terminal
from workflows.runtime.inference import (
    InferenceError,
    InferenceModel,
    add_scoring_args,
    load_for_inference,
    score_videos,
)
from workflows.runtime.ray_session import init_ray

log = logging.getLogger("vidssl.evaluate")


@dataclass(frozen=True)
class EvalSet:
    items: list[dict[str, object]]  # {"path": absolute path, "label": index into the MODEL's classes}
    description: str  # for tags and the printed header


def _csv_has_split(path: Path) -> bool:
    header = next(csv.reader(io.StringIO(read_text(path, ManifestError), newline="")), [])
    return "split" in (h.strip() for h in header)


def _records(data: str, split: str) -> tuple[Manifest, list[VideoRecord], str]:
    """The labeled videos `--data` names (see --help), with where they came from."""
    path = Path(data).expanduser()
    if not path.exists():
        raise ManifestError(f"{data}: no such file or folder")
    if path.suffix.lower() in (".yaml", ".yml"):
        d = load_config(path).data
        manifest = load_manifest(d.layout, d.root, csv_path=d.csv_path, ucf_split=d.ucf_split,
                                 test_fraction=d.test_fraction, seed=d.split_seed, infer_classes=d.infer_classes)
        return manifest, manifest.split(split), f"{data} [{split}]"
    if path.suffix.lower() == ".csv":
        # A listing named on the command line may point anywhere (absolute paths), as predict's --videos CSV; its
        # labels are checked against the model's classes (load_eval_set), so they need no class list of their own.
        manifest = load_manifest("csv", path.parent, csv_path=path, confine=False, infer_classes=True)
        has_split = _csv_has_split(path)
    elif path.is_dir():
        manifest = load_manifest("folder", path)
        has_split = all((path / s).is_dir() for s in SPLITS)
    else:
        raise ManifestError(f"{data}: not a YAML training config, a CSV manifest or a dataset folder")
    # Without a split of its own the whole set is held-out data (the loader's random hold-out is for training).
    if has_split:
        return manifest, manifest.split(split), f"{data} [{split}]"
    return manifest, list(manifest.records), data


def load_eval_set(data: str, split: str, model_classes: Sequence[str]) -> EvalSet:
    """`--data` -> videos labeled with the model's class indices; a class the model lacks is an error."""
    manifest, records, description = _records(data, split)
    if not records:
        raise ManifestError(f"{description}: no videos to evaluate")
    index = {c: i for i, c in enumerate(model_classes)}
    items: list[dict[str, object]] = []
    for r in records:
        name = manifest.classes[r.label]
        if name not in index:
            raise ManifestError(
                f"{data}: class {name!r} (video {r.path}) is not one of the model's {len(index)} classes: "
                f"{', '.join(sorted(index))}"
            )
        items.append({"path": r.path, "label": index[name]})
    return EvalSet(items, description)


@dataclass
class EvalResult:
    probs: np.ndarray  # (N, C) float32, readable videos only
    labels: np.ndarray  # (N,) int64
    skipped: dict[str, str]  # unreadable video -> error


def run_scoring(eval_set: EvalSet, loaded: InferenceModel, args: argparse.Namespace) -> EvalResult:
    init_ray()
    ds = score_videos(eval_set.items, loaded, clips=args.clips, crops=args.crops, batch_size=args.batch_size,
                      decode_cpus=args.decode_cpus, actors=args.actors)
    probs, labels, skipped = [], [], {}
    for batch in ds.iter_batches(batch_size=256, batch_format="numpy"):
        for path, label, p, error in zip(batch["path"], batch["label"], batch["probs"], batch["error"], strict=True):
            if error:
                skipped[str(path)] = str(error)
            else:
                probs.append(p)
                labels.append(int(label))
    num_classes = len(loaded.classes)
    return EvalResult(np.array(probs, np.float32).reshape(-1, num_classes), np.array(labels, np.int64), skipped)


def _per_class_csv(classes: Sequence[str], confusion: np.ndarray) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", "videos", "correct", "accuracy"])
    for i, name in enumerate(classes):
        videos, correct = int(confusion[i].sum()), int(confusion[i, i])
        writer.writerow([name, videos, correct, f"{correct / videos:.4f}" if videos else ""])
    return buf.getvalue()


def log_evaluation(
    result: EvalResult, loaded: InferenceModel, eval_set: EvalSet, args: argparse.Namespace, tracking_uri: str
) -> tuple[str, dict[str, float]]:
    """Write the evaluation run; returns its id and the headline metrics."""
    # here: MLflow and matplotlib take seconds to load; only a tracked run needs them
    from workflows.tracking.plots import confusion_figure
    from workflows.tracking.tracker import Tracker

    classes = loaded.classes
    counts = EvalCounts.zeros(len(classes))
    counts.add(torch.from_numpy(result.probs), torch.from_numpy(result.labels))
    per_class = counts.per_class().numpy()  # nan for classes without videos: left out of the mean
    mean_class = float(np.nanmean(per_class)) if len(result.labels) else float("nan")
    metrics = {**counts.summary(), "mean_class_accuracy": mean_class, "num_videos": float(len(result.labels)),
               "skipped_videos": float(len(result.skipped))}
    src = loaded.source
    model_tags = {"vidssl.evaluated_model": src["spec"], "vidssl.model_uri": src["uri"],
                  "vidssl.model_name": src["name"], "vidssl.model_version": src["version"],
                  "vidssl.model_id": src["model_id"], "vidssl.training_run": src["run_id"],
                  "vidssl.checkpoint": src["checkpoint"], "vidssl.checkpoint_step": src["step"]}
    tags = {k: str(v) for k, v in model_tags.items() if v is not None}
    tags |= {"vidssl.data": eval_set.description, "vidssl.protocol": f"{args.clips} clips x {args.crops} crops"}
    run_name = f"eval-{src['name']}-v{src['version']}" if src["name"] else f"eval-{Path(src['uri']).name}"
    tracker = Tracker.start(tracking_uri, args.experiment, run_name, tags)
    try:
        tracker.log_params({"model": src["spec"], "data": args.data, "split": args.split, "clips": args.clips,
                            "crops": args.crops, **{f"meta.{k}": v for k, v in loaded.meta.items() if k != "classes"},
                            "num_classes": len(classes)})
        # Linked to the LoggedModel too, so the model's page in MLflow lists its evaluations.
        tracker.log_metrics(metrics, step=0, model_id=src["model_id"])
        tracker.log_text(_per_class_csv(classes, counts.confusion.numpy()), "per_class_accuracy.csv")
        tracker.log_figure(confusion_figure(counts.confusion, classes, title=f"{src['spec']}\n{eval_set.description}"),
                           "confusion.png")
        if result.skipped:
            tracker.log_text("".join(f"{p}\t{e}\n" for p, e in sorted(result.skipped.items())), "skipped_videos.tsv")
        if src["name"] and src["version"]:
            tracker.client.set_model_version_tag(src["name"], src["version"], "vidssl.evaluation_run",
                                                 tracker.run_id)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return tracker.run_id, metrics


def _table(metrics: dict[str, float]) -> str:
    def pct(key: str) -> str:
        value = metrics[key]
        return "n/a" if value != value else f"{100 * value:.1f}"

    rows = [("top-1 %", pct("top1")), ("top-5 %", pct("top5")), ("mean class %", pct("mean_class_accuracy")),
            ("videos", str(int(metrics["num_videos"]))), ("skipped", str(int(metrics["skipped_videos"])))]
    return "\n".join(f"{name:<14} {value:>8}" for name, value in rows)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidssl evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, metavar="CONFIG|CSV|DIR",
                        help="a training config (its data section's --split, with the same hold-out as "
                             "training), a CSV manifest path,label[,split] (its --split rows when it has a split "
                             "column, else all rows) or a folder root/<class>/<video> (all videos) or "
                             "root/{train,test}/<class>/<video> (--split)")
    parser.add_argument("--split", default="test", choices=SPLITS)
    add_scoring_args(parser, clips=10, crops=3, clips_help="uniformly spaced clips per video (default 10)")
    parser.add_argument("--experiment", default="vidssl-evaluation")
    parser.add_argument("--verbose", action="store_true",
                        help="also print what Ray, Ray Data and MLflow log")
    return parser


@reports_user_errors(InferenceError)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with terminal.session(args.verbose):
        # here: MLflow (seconds to load) is imported once terminal.session has told it to leave the console alone
        from workflows.tracking.tracker import resolve_uri, ui_command

        tracking_uri = resolve_uri(args.tracking_uri)
        if min(args.clips, args.crops, args.batch_size) < 1:
            raise ConfigError("--clips, --crops and --batch-size must be >= 1")
        loaded = load_for_inference(args.model, tracking_uri, trust_pickle=args.trust_pickle)
        eval_set = load_eval_set(args.data, args.split, loaded.classes)
        result = run_scoring(eval_set, loaded, args)
        if not len(result.labels):  # no metric to report, no evaluation run to log
            raise unreadable_split(eval_set.description, result.skipped, len(result.skipped))
        if result.skipped:
            print(skipped_videos_line(result.skipped, args.split, len(result.labels)), file=sys.stderr, flush=True)
        run_id, metrics = log_evaluation(result, loaded, eval_set, args, tracking_uri)
        src = loaded.source
        where = f"version {src['version']} of {src['name']}" if src["name"] else src["uri"]
        print()
        print(f"{src['spec']} ({where}) on {eval_set.description}: {args.clips} clips x {args.crops} crops")
        print(_table(metrics))
        print(f"MLflow evaluation run: {run_id} (experiment {args.experiment})")
        print(f"review it: {ui_command(tracking_uri)}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
