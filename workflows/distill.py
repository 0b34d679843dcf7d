"""Distil a trained model into a smaller student for deployment, and measure what it costs and saves.

    python -m workflows.distill --teacher models:/vidssl-demo-primary@champion --student small3d_w0.25
    python -m workflows.distill --teacher runs/cmpl-20261123-034835 --student small3d_w0.5 --mode hard \
        --set train.iterations=400
    python -m workflows.distill --teacher models:/vidssl-demo-primary/latest --student small3d_w0.25 \
        --config configs/demo.yaml --registered-model vidssl-demo-small --eval-clips 10 --eval-crops 3

The student trains with the `distill` algorithm (ssl_core.algorithms.distill) on the teacher's own training
config (its MLflow `config.yaml` artifact, or the `vidssl_run.json` of its run folder) unless `--config` names
another; `--set` overrides come last. The teacher is pinned to the version it resolves to when the command
starts (models:/name/N, a logged model id or a checkpoint directory), so an alias that moves meanwhile changes
nothing. Training is an ordinary Ray Train + MLflow run (workflows.runtime.training.run_training) tagged with its
lineage (`vidssl.teacher`, `vidssl.teacher_model_uri`, `vidssl.teacher_version`, `vidssl.workflow=distill`); the
student is registered as `--registered-model` (default `<teacher's registered name>-<student>`) and its model
version carries the same tags.

Then teacher and student are scored on the config's test split with the same protocol (`--eval-clips` x
`--eval-crops` views per video, through the Ray Data scoring pipeline of workflows.runtime.inference), and their CPU
forward throughput is measured side by side in this process (same batch, same torch thread count, warm-up then
interleaved timed repeats, median). The trade-off table (top-1, top-5, parameters, clips/s, speed-up) goes to
the distillation run as `tradeoff/*` metrics, `tradeoff.md` and `tradeoff.json` (an MLflow table), and is
printed as markdown.
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ssl_core.algorithms.distill import MODES
from ssl_core.checkpoint import model_meta
from ssl_core.config import Config, ConfigError, dump_yaml, read_config_file, with_overrides
from ssl_core.evaluate import EvalCounts
from ssl_core.models import build_model
from ssl_core.user_errors import reports_user_errors
from workflows.console import terminal
from workflows.evaluate import EvalSet, load_eval_set, run_scoring
from workflows.runtime.inference import InferenceError, InferenceModel, add_trust_pickle_arg, load_for_inference

log = logging.getLogger("vidssl.distill")


@dataclass(frozen=True)
class ModelReport:
    """One row of the trade-off table."""

    role: str  # "teacher" | "student"
    name: str  # how to load it: models:/name/N, a logged model URI or a checkpoint directory
    architecture: str
    top1: float
    top5: float
    params: int
    clips_per_s: float


@dataclass(frozen=True)
class Distillation:
    markdown: str  # the trade-off table with its protocol
    run_id: str  # the student's training run, which holds the trade-off too
    tracking_uri: str
    student: str  # models:/name/N when registered, else the logged model URI


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pinned_spec(teacher: InferenceModel) -> str:
    """The teacher as an immutable reference: the registered version it resolved to (readable in params and
    tags), else the logged model id or the checkpoint directory that load_for_inference resolved."""
    src = teacher.source
    if src["name"] and src["version"]:
        return f"models:/{src['name']}/{src['version']}"
    return str(src["uri"])


def teacher_training_config(teacher: InferenceModel) -> dict[str, Any] | None:
    """The resolved config the teacher was trained with, or None when it cannot be found."""
    # here: MLflow (seconds to load) is imported once terminal.session has told it to leave the console alone
    from workflows.runtime.run_state import RUN_FILE, RunState

    src = teacher.source
    if src["kind"] == "mlflow":
        if not src["run_id"]:
            return None
        from mlflow import MlflowClient  # here: as workflows.train above
        from mlflow.exceptions import MlflowException

        client = MlflowClient(tracking_uri=src["tracking_uri"])
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = client.download_artifacts(src["run_id"], "config.yaml", tmp)
            except (MlflowException, OSError):
                return None
            raw = yaml.safe_load(Path(path).read_text())
        return raw if isinstance(raw, dict) else None
    # A checkpoint directory lives inside its run folder; a run folder stands for its latest checkpoint.
    checkpoint = Path(src["checkpoint"])
    for folder in (checkpoint, checkpoint.parent):
        if (folder / RUN_FILE).exists():
            return RunState.load(folder).config
    return None


def teacher_architecture(teacher: InferenceModel, teacher_cfg: Mapping[str, Any] | None) -> str:
    """The teacher's model name from its training config; its class name when the config does not say."""
    src = teacher.source
    # A checkpoint spec may name another role than the primary (`PATH#auxiliary`); it travels in the uri.
    role = src["uri"][len(src["checkpoint"]) + 1:] if src["kind"] == "checkpoint" else ""
    name = (teacher_cfg or {}).get("model", {}).get(role or "primary")
    return str(name) if name else type(teacher.model).__name__


def check_student(student: str, teacher: InferenceModel, allow_larger: bool) -> None:
    """Refuses unknown names and (unless allowed) a student as large as the teacher, which would defeat the
    purpose of distilling for deployment."""
    try:
        params = count_params(build_model(student, num_classes=len(teacher.classes)))
    except (KeyError, ValueError) as err:  # the message lists the registered models
        raise ConfigError(f"--student: {err.args[0]}") from err
    teacher_params = count_params(teacher.model)
    if params >= teacher_params and not allow_larger:
        raise ConfigError(f"--student {student}: {params:,} parameters, not fewer than the teacher's "
                          f"{teacher_params:,}; pick a smaller model (e.g. a _w0.25 width) or pass --allow-larger")


def distill_config(base: Mapping[str, Any], args: argparse.Namespace, teacher: InferenceModel) -> Config:
    """`base` with the distillation keys set; `--set` overrides last. Values are set in the mapping rather
    than as key=value strings so that a path is never re-read as YAML (e.g. a folder named `1`)."""
    raw = copy.deepcopy(dict(base))
    src = teacher.source
    algorithm = raw.setdefault("algorithm", {})
    algorithm["name"] = "distill"
    for key in ("mode", "temperature"):
        if getattr(args, key) is not None:
            algorithm[key] = getattr(args, key)
    model = raw.setdefault("model", {})
    model["primary"] = args.student
    model["teacher"] = pinned_spec(teacher)
    if teacher.pickle_trusted:  # the Train workers reload the teacher: the trust given on the command line holds there
        model["trust_pickle"] = True
    tracking = raw.setdefault("tracking", {})
    # The Train worker loads an MLflow teacher from the run's own tracking store.
    tracking["uri"] = args.tracking_uri or src["tracking_uri"] or tracking.get("uri")
    # A teacher's run name (e.g. a sweep trial's) would mislabel the student's run.
    tracking["run_name"] = None
    default_name = f"{src['name']}-{args.student}" if src["name"] else f"vidssl-distilled-{args.student}"
    tracking["registered_model"] = args.registered_model or default_name
    return with_overrides(raw, args.set)


def lineage_tags(args: argparse.Namespace, teacher: InferenceModel) -> dict[str, str]:
    src = teacher.source
    tags = {"vidssl.workflow": "distill", "vidssl.teacher": args.teacher, "vidssl.teacher_model_uri": src["uri"],
            "vidssl.teacher_version": src["version"], "vidssl.teacher_run": src["run_id"],
            "vidssl.teacher_checkpoint_step": src["step"]}
    return {k: str(v) for k, v in tags.items() if v is not None}


def held_out_set(cfg: Config, classes: Sequence[str]) -> EvalSet:
    """The config's test split (the one training evaluated), labeled with the model's class indices."""
    # load_eval_set reads a dataset from a config file; this one is the run's resolved config.
    with tempfile.TemporaryDirectory() as tmp:
        config_file = Path(tmp) / "config.yaml"
        config_file.write_text(dump_yaml(cfg))
        eval_set = load_eval_set(str(config_file), "test", classes)
    return replace(eval_set, description=f"{cfg.data.root} [test]")


def score(loaded: InferenceModel, eval_set: EvalSet, args: argparse.Namespace) -> dict[str, float]:
    """top1, top5 and the number of videos scored."""
    scoring = argparse.Namespace(clips=args.eval_clips, crops=args.eval_crops, batch_size=args.batch_size,
                                 decode_cpus=args.decode_cpus, actors=args.actors)
    result = run_scoring(eval_set, loaded, scoring)
    if result.skipped:
        log.warning("%s: %d unreadable test videos left out", loaded.source["spec"], len(result.skipped))
    counts = EvalCounts.zeros(len(loaded.classes))
    counts.add(torch.from_numpy(result.probs), torch.from_numpy(result.labels))
    return {**counts.summary(), "num_videos": float(len(result.labels))}


def cpu_throughput(
    models: Mapping[str, nn.Module],
    shapes: Mapping[str, tuple[int, ...]],  # per model: (3, T, H, W) of one clip
    *,
    batch: int,
    threads: int,
    repeats: int,
    warmup: int = 2,
) -> dict[str, float]:
    """Clips per second of one forward pass on the CPU, per model: the median over `repeats` timed batches.
    The models take turns (alternating which goes first) so that a slow spell of the machine hits both."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    by_shape: dict[tuple[int, ...], torch.Tensor] = {}
    for shape in shapes.values():
        if shape not in by_shape:
            by_shape[shape] = torch.randn(batch, *shape, generator=generator)
    times: dict[str, list[float]] = {role: [] for role in models}
    roles = list(models)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                for role in roles:
                    models[role](by_shape[shapes[role]])
            for r in range(repeats):
                for role in roles if r % 2 == 0 else roles[::-1]:
                    clips = by_shape[shapes[role]]
                    start = time.perf_counter()
                    models[role](clips)
                    times[role].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return {role: batch / statistics.median(t) for role, t in times.items()}


def clip_shape(meta: Mapping[str, Any]) -> tuple[int, ...]:
    return (3, int(meta["num_frames"]), int(meta["crop_size"]), int(meta["crop_size"]))


def tradeoff_markdown(rows: Sequence[ModelReport], speedup: float, protocol: str) -> str:
    def pct(value: float) -> str:
        return "n/a" if value != value else f"{100 * value:.1f}"

    lines = ["| model | architecture | top-1 % | top-5 % | parameters | CPU clips/s |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.role}: `{r.name}` | {r.architecture} | {pct(r.top1)} | {pct(r.top5)} | {r.params:,} "
                     f"| {r.clips_per_s:.1f} |")
    teacher, student = rows
    lines += ["", f"Student: {teacher.params / student.params:.1f}x fewer parameters, {speedup:.2f}x the teacher's "
              f"CPU throughput, {100 * (student.top1 - teacher.top1):+.1f} points top-1.", "", protocol]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidssl distill", description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True, metavar="SPEC",
                        help="models:/name@alias, models:/name/N, runs:/<run id>/model, a checkpoint directory "
                             "or a training run folder (its latest checkpoint)")
    add_trust_pickle_arg(parser)
    parser.add_argument("--student", required=True, metavar="MODEL",
                        help="registered model name of the student, e.g. small3d_w0.25 (`vidssl list models`)")
    parser.add_argument("--config", help="base training config (default: the teacher's own training config)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, applied last, e.g. --set train.iterations=200 (repeatable)")
    parser.add_argument("--registered-model", metavar="NAME",
                        help="registry name of the student (default: <teacher's registered name>-<student>, "
                             "or vidssl-distilled-<student> for an unregistered teacher)")
    parser.add_argument("--mode", choices=MODES, help="soft (Hinton KD) or hard (DeiT) distillation "
                                                      "(default: the config's, else soft)")
    parser.add_argument("--temperature", type=float, help="soft-mode temperature (default: the config's, else 4)")
    parser.add_argument("--allow-larger", action="store_true",
                        help="accept a student with as many parameters as the teacher or more")
    parser.add_argument("--eval-clips", type=int, default=4, help="clips per test video (default 4)")
    parser.add_argument("--eval-crops", type=int, default=1, help="crops per clip (default 1: centre)")
    parser.add_argument("--batch-size", type=int, default=4, help="videos per forward pass when scoring")
    parser.add_argument("--actors", type=int, default=None,
                        help="scoring model replicas (default: one per GPU, else a quarter of the CPUs)")
    parser.add_argument("--decode-cpus", type=float, default=0.5, help="CPUs per decode task when scoring")
    parser.add_argument("--bench-batch", type=int, default=8, help="clips per timed CPU forward pass")
    parser.add_argument("--bench-threads", type=int, default=1,
                        help="torch threads for the CPU timing (default 1: comparable across machines)")
    parser.add_argument("--bench-repeats", type=int, default=20, help="timed forward passes per model")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite ./mlflow.db)")
    parser.add_argument("--verbose", action="store_true",
                        help="also print what Ray, Ray Data and MLflow log")
    return parser


def run_distillation(
    cfg: Config, args: argparse.Namespace, teacher: InferenceModel, teacher_arch: str
) -> Distillation:
    """Train and register the student, then measure the trade-off and log it into the student's run."""
    # here: MLflow (seconds to load) is imported once terminal.session has told it to leave the console alone
    from workflows.runtime.training import run_training
    from workflows.tracking.tracker import Tracker

    tags = lineage_tags(args, teacher)
    outcome = run_training(cfg, extra_tags=tags)
    tracker = Tracker(outcome.tracking_uri, outcome.mlflow_run_id)
    registered, version = cfg.tracking.registered_model, outcome.model_version
    if registered and version:
        for key, value in tags.items():
            tracker.client.set_model_version_tag(registered, version, key, value)
    student_ref = f"models:/{registered}/{version}" if registered and version else outcome.model_uri

    # The run reopens while the trade-off is measured, so its end time and status cover the whole workflow.
    tracker.client.update_run(outcome.mlflow_run_id, status="RUNNING")
    try:
        student = load_for_inference(outcome.model_uri, outcome.tracking_uri)
        eval_set = held_out_set(cfg, teacher.classes)
        accuracy = {"teacher": score(teacher, eval_set, args), "student": score(student, eval_set, args)}
        shapes = {"teacher": clip_shape(teacher.meta), "student": clip_shape(student.meta)}
        speed = cpu_throughput({"teacher": teacher.model, "student": student.model}, shapes,
                               batch=args.bench_batch, threads=args.bench_threads, repeats=args.bench_repeats)
        refs = {"teacher": (pinned_spec(teacher), teacher_arch, teacher.model),
                "student": (student_ref, cfg.model.primary, student.model)}
        rows = [ModelReport(role, name, arch, accuracy[role]["top1"], accuracy[role]["top5"], count_params(model),
                            speed[role]) for role, (name, arch, model) in refs.items()]
        speedup = speed["student"] / speed["teacher"]
        shape_text = " / ".join(sorted({"x".join(map(str, s[1:])) for s in shapes.values()}))
        protocol = (f"Top-1/top-5 on the test split of {cfg.data.root} ({int(accuracy['student']['num_videos'])} "
                    f"videos, {args.eval_clips} clips x {args.eval_crops} crop(s) per video); CPU clips/s: forward "
                    f"passes of {args.bench_batch} clips of {shape_text} (frames x height x width), "
                    f"{args.bench_threads} torch thread(s), median of {args.bench_repeats} after warm-up.")
        metrics = {"tradeoff/speedup": speedup, "tradeoff/param_reduction": rows[0].params / rows[1].params}
        for r in rows:
            metrics |= {f"tradeoff/{r.role}_top1": r.top1, f"tradeoff/{r.role}_top5": r.top5,
                        f"tradeoff/{r.role}_params": float(r.params), f"tradeoff/{r.role}_clips_per_s": r.clips_per_s}
        tracker.log_metrics(metrics, step=int(outcome.metrics.get("step", 0)))
        markdown = tradeoff_markdown(rows, speedup, protocol)
        tracker.log_text(markdown + "\n", "tradeoff.md")
        tracker.client.log_table(outcome.mlflow_run_id, {
            "model": [r.role for r in rows], "name": [r.name for r in rows],
            "architecture": [r.architecture for r in rows], "top1": [r.top1 for r in rows],
            "top5": [r.top5 for r in rows], "params": [r.params for r in rows],
            "clips_per_s": [r.clips_per_s for r in rows],
        }, "tradeoff.json")
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return Distillation(markdown, outcome.mlflow_run_id, outcome.tracking_uri, student_ref)


def prepare(args: argparse.Namespace) -> tuple[Config, InferenceModel, str]:
    """The student's training config, the loaded teacher and its architecture name; ConfigError /
    InferenceError before anything starts when the request cannot work."""
    # here: MLflow (seconds to load) is imported once terminal.session has told it to leave the console alone
    from workflows.tracking.tracker import resolve_uri

    if min(args.eval_clips, args.eval_crops, args.batch_size, args.bench_batch, args.bench_threads,
           args.bench_repeats) < 1:
        raise ConfigError("--eval-clips, --eval-crops, --batch-size and --bench-* must be >= 1")
    teacher = load_for_inference(args.teacher, resolve_uri(args.tracking_uri), trust_pickle=args.trust_pickle)
    check_student(args.student, teacher, args.allow_larger)
    teacher_cfg = teacher_training_config(teacher)
    if args.config is not None:
        # validated only once the distillation keys are in (a base naming distill has no teacher yet)
        base = read_config_file(args.config)
    elif teacher_cfg is not None:
        base = teacher_cfg
    else:
        raise ConfigError(f"--teacher {args.teacher}: its training config cannot be found (no config.yaml artifact "
                          "on its MLflow run, no vidssl_run.json beside its checkpoint); pass --config")
    cfg = distill_config(base, args, teacher)
    owned = {"algorithm.name": (cfg.algorithm.name, "distill"), "model.primary": (cfg.model.primary, args.student),
             "model.teacher": (cfg.model.teacher, pinned_spec(teacher))}
    overridden = [key for key, (value, expected) in owned.items() if value != expected]
    if overridden:
        raise ConfigError(f"{overridden[0]}: set by this workflow (--student / --teacher), not by --set")
    # The teacher sees the student's clips: it still runs on another clip shape, but what it learned may not hold.
    clips = {k: v for k, v in model_meta(cfg, []).items() if k != "classes"}
    mismatched = [f"{k} {teacher.meta[k]} vs {v}" for k, v in clips.items() if teacher.meta[k] != v]
    if mismatched:
        log.warning("the teacher was trained on other clips than this config's: %s", ", ".join(mismatched))
    return cfg, teacher, teacher_architecture(teacher, teacher_cfg)


@reports_user_errors(InferenceError)
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with terminal.session(args.verbose):
        cfg, teacher, teacher_arch = prepare(args)
        done = run_distillation(cfg, args, teacher, teacher_arch)
        # here: MLflow (seconds to load) is imported once terminal.session has told it to leave the console alone
        from workflows.tracking.tracker import ui_command

        print()
        print(done.markdown)
        print()
        print(f"student: {done.student}  MLflow run: {done.run_id}")
        print(f"review it:  {ui_command(done.tracking_uri)}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
