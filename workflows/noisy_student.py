"""Noisy Student rounds (Xie et al. 2020) as a staged workflow: teacher, then R x (label the unlabeled set
with Ray Data batch inference, train an equal-or-larger noised student on labeled + pseudo-labeled clips).

    python -m workflows.noisy_student --config configs/noisy_student_demo.yaml [--dry-run]
    python -m workflows.noisy_student --config configs/noisy_student_demo.yaml --resume   # after a stop
    python -m workflows.noisy_student --config ... --until round-1-labels                 # stop after a stage

Stages: round-0-teacher (any algorithm, supervised by default), then per round r: round-r-labels (the previous
stage's model scores every unlabeled train video; the confidence filter and optional top-K per class pick the
set, stored as <folder>/round-r/pseudo_labels.parquet) and round-r-student (algorithm noisy_student_offline on
that set, with the student's noise: RandAugment, dropout, stochastic depth). Every stage uses the same
labeled split (<folder>/labeled_split.csv).

MLflow: one parent run per workflow, one nested run per stage, with lineage tags: `vidssl.labeled_by` (the
model URI that labeled a set), `vidssl.pseudo_labels` (the set a student learned, also recorded as an MLflow
dataset input whose digest is the file's hash), `vidssl.round`, `vidssl.stage`. A labeling run holds the set
(artifact pseudo_labels/round-r.parquet), its statistics (stats.json, per_class.csv; accuracy where the
truth is known: metrics only). The parent gets `round/top1` per round and rounds.csv.

State: <output.storage>/<name>/noisy_student.json records each finished stage; `--resume` skips them and
continues an interrupted training stage from its latest checkpoint, in the same MLflow run.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from ssl_core.config import Config, ConfigError, pin_paths
from ssl_core.data.splits import ensure_synthetic
from ssl_core.user_errors import reports_user_errors
from workflows.console import terminal
from workflows.runtime.ray_session import init_ray
from workflows.runtime.run_state import write_record
from workflows.specs.noisy_student import LabelSpec, NoisyStudentSpec, Stage, load_noisy_student
from workflows.specs.sweep import check_name, trial_config

STATE_FILE = "noisy_student.json"
log = logging.getLogger("vidssl.noisy_student")


class WorkflowStopped(RuntimeError):
    """Interrupted (Ctrl+C) or stopped on purpose (--until): finished stages are kept for --resume."""

    def __init__(self, message: str, *, on_purpose: bool = False) -> None:
        super().__init__(message)
        self.on_purpose = on_purpose


@dataclass
class WorkflowState:
    folder: Path
    parent_run_id: str
    tracking_uri: str
    spec: dict[str, Any]  # NoisyStudentSpec as stored at the start (with the base's paths pinned)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage key -> what it produced

    def save(self) -> None:
        payload = {"parent_run_id": self.parent_run_id, "tracking_uri": self.tracking_uri, "spec": self.spec,
                   "stages": self.stages}
        write_record(self.folder / STATE_FILE, payload)

    @classmethod
    def load(cls, folder: Path) -> WorkflowState:
        payload = json.loads((folder / STATE_FILE).read_text())
        return cls(folder, payload["parent_run_id"], payload["tracking_uri"], payload["spec"], payload["stages"])

    def stored_spec(self) -> NoisyStudentSpec:
        raw = dict(self.spec)
        raw["labels"] = LabelSpec(**raw["labels"])
        return NoisyStudentSpec(**raw)

    @property
    def split_file(self) -> Path:
        return self.folder / "labeled_split.csv"

    def set_file(self, round_: int) -> Path:
        return self.folder / f"round-{round_}" / "pseudo_labels.parquet"


def stage_training_config(spec: NoisyStudentSpec, state: WorkflowState, stage: Stage) -> Config:
    extra = [f"output.storage={state.folder / 'runs'}", f"data.labeled_split_file={state.split_file}",
             f"tracking.run_name={stage.key}"]
    if stage.kind == "student":
        extra.append(f"data.pseudo_labels={state.set_file(stage.round)}")
    return spec.stage_config(stage, *extra)


def previous_model(spec: NoisyStudentSpec, state: WorkflowState, round_: int) -> str:
    """The model that labels round `round_`'s set: the round before's teacher or student, pinned to its
    registered version when it has one (a readable URI in the lineage tags), else its logged model."""
    key = "round-0-teacher" if round_ == 1 else f"round-{round_ - 1}-student"
    done = state.stages[key]
    if done.get("registered_name") and done.get("model_version"):
        return f"models:/{done['registered_name']}/{done['model_version']}"
    return str(done["model_uri"])


def run_training_stage(spec: NoisyStudentSpec, state: WorkflowState, stage: Stage) -> dict[str, Any]:
    # here: Ray and MLflow take seconds to load; --dry-run and --help do without them
    from workflows.runtime.training import run_training

    cfg = stage_training_config(spec, state, stage)
    tags = {"mlflow.parentRunId": state.parent_run_id, "vidssl.noisy_student": spec.name,
            "vidssl.stage": stage.kind, "vidssl.round": str(stage.round)}
    if stage.kind == "student":
        tags |= {"vidssl.labeled_by": state.stages[f"round-{stage.round}-labels"]["labeled_by"],
                 "vidssl.pseudo_labels": str(state.set_file(stage.round))}
    run_dir = state.folder / "runs" / stage.key
    # A stage interrupted mid-training continues from its latest checkpoint, in its own MLflow run.
    resume = stage.key if (run_dir / "vidssl_run.json").exists() else None
    outcome = run_training(cfg, resume=resume, extra_tags=tags)
    if stage.kind == "student":
        labels = state.stages[f"round-{stage.round}-labels"]
        _log_set_input(outcome.tracking_uri, outcome.mlflow_run_id, state, stage.round, labels, "training")
    if outcome.model_version is not None:
        from mlflow import MlflowClient  # here: as workflows.train above

        client = MlflowClient(tracking_uri=outcome.tracking_uri)
        for key, value in tags.items():
            if key.startswith("vidssl."):
                client.set_model_version_tag(cfg.tracking.registered_model, outcome.model_version, key, value)
    return {"run_name": stage.key, "mlflow_run_id": outcome.mlflow_run_id, "model_uri": outcome.model_uri,
            "registered_name": cfg.tracking.registered_model, "model_version": outcome.model_version,
            "model": cfg.model.primary, "top1": outcome.metrics.get("eval/top1_primary", float("nan"))}


def _set_table(path: Path) -> Any:
    # What MLflow's Datasets panel shows: the human-readable columns, not the probability vectors.
    return pq.read_table(path, columns=["path", "label_name", "confidence"]).to_pandas()


def _log_set_input(uri: str, run_id: str, state: WorkflowState, round_: int, labels: dict[str, Any],
                   context: str) -> None:
    # here: MLflow (seconds to load) is imported once terminal.session has told it to leave the console alone
    from workflows.tracking.tracker import Tracker

    path = state.set_file(round_)
    Tracker(uri, run_id).log_dataset(_set_table(path), path.as_uri(), f"{state.folder.name}-round-{round_}",
                                     labels["digest"], context)


def run_labeling_stage(spec: NoisyStudentSpec, state: WorkflowState, stage: Stage) -> dict[str, Any]:
    # here: Ray and MLflow take seconds to load; --dry-run and --help do without them
    from workflows.runtime.pseudo_labeling import label_unlabeled
    from workflows.tracking.tracker import Tracker

    labeled_by = previous_model(spec, state, stage.round)
    # The teacher stage's config: same data, same labeled split (the algorithm does not matter here).
    cfg = stage_training_config(spec, state, Stage("round-0-teacher", "teacher", 0))
    labels = spec.labels
    out = state.set_file(stage.round)
    made = label_unlabeled(cfg, labeled_by, labels, out, tracking_uri=state.tracking_uri,
                           made_by={"labeled_by": labeled_by, "round": stage.round, "workflow": spec.name})
    stats, skipped, items = made.stats, made.skipped, made.candidates
    stats |= {"candidates": items, "scored": items - len(skipped), "skipped": len(skipped)}
    digest = hashlib.sha256(out.read_bytes()).hexdigest()[:16]

    tags = {"mlflow.parentRunId": state.parent_run_id, "vidssl.noisy_student": spec.name, "vidssl.stage": "labels",
            "vidssl.round": str(stage.round), "vidssl.labeled_by": labeled_by,
            "vidssl.pseudo_labels": str(out), "vidssl.pseudo_labels_digest": digest}
    experiment = cfg.tracking.experiment
    tracker = Tracker.start(state.tracking_uri, experiment, stage.key, tags)
    tracker.log_params({"labeled_by": labeled_by, **{f"pseudo_labels.{k}": v
                                                      for k, v in dataclasses.asdict(labels).items()}})
    tracker.log_metrics({f"pseudo_set/{k}": float(stats[k]) for k in
                         ("size", "candidates", "skipped", "mean_confidence", "accuracy", "accuracy_before_filter")},
                        step=stage.round)
    tracker.log_artifact(out, "pseudo_labels")
    tracker.log_text(json.dumps(stats, indent=2), "stats.json")
    tracker.log_text(_per_class_csv(stats), "per_class.csv")
    if skipped:
        tracker.log_text("".join(f"{p}\t{e}\n" for p, e in sorted(skipped.items())), "skipped_videos.tsv")
    result = {"labeled_by": labeled_by, "mlflow_run_id": tracker.run_id, "path": str(out), "digest": digest,
              "size": stats["size"], "candidates": items, "skipped": len(skipped),
              "accuracy": stats["accuracy"], "mean_confidence": stats["mean_confidence"]}
    _log_set_input(state.tracking_uri, tracker.run_id, state, stage.round, result, "pseudo-labels")
    tracker.finish()
    log.info("%s: %d of %d videos kept (accuracy %.3f, %d unreadable)", stage.key, stats["size"], items,
             stats["accuracy"], len(skipped))
    return result


def _per_class_csv(stats: dict[str, Any]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", "count", "mean_confidence", "accuracy"])
    for name, row in stats["per_class"].items():
        accuracy = row.get("accuracy", float("nan"))
        writer.writerow([name, row["count"], f"{row['mean_confidence']:.4f}", f"{accuracy:.4f}"])
    return buf.getvalue()


def start_or_resume(spec: NoisyStudentSpec, resume: bool) -> WorkflowState:
    # here: MLflow (seconds to load) is imported once terminal.session has told it to leave the console alone
    from workflows.tracking.tracker import Tracker, resolve_uri

    base = spec.resolved_base()
    folder = Path(base.output.storage).expanduser().resolve() / spec.name
    if resume:
        if not (folder / STATE_FILE).exists():
            raise ConfigError(f"--resume: no noisy student workflow in {folder}")
        state = WorkflowState.load(folder)
        Tracker(state.tracking_uri, state.parent_run_id).client.update_run(state.parent_run_id, status="RUNNING")
        return state
    if folder.exists():
        raise ConfigError(f"noisy_student.name: {folder} already exists; --resume it or choose another name")
    uri = resolve_uri(base.tracking.uri)
    folder.mkdir(parents=True)
    stored = dataclasses.asdict(dataclasses.replace(spec, base=pin_paths(spec.base, uri)))
    parent = Tracker.start(uri, base.tracking.experiment, spec.name, {"vidssl.noisy_student": spec.name})
    parent.log_params({"rounds": spec.rounds, **{f"pseudo_labels.{k}": v for k, v in stored["labels"].items()},
                       **{f"teacher.{k}": v for k, v in spec.teacher.items()},
                       **{f"student.{k}": v for k, v in spec.student.items()}})
    parent.log_text(yaml.safe_dump(stored, sort_keys=False), "workflow.yaml")
    state = WorkflowState(folder, parent.run_id, uri, stored)
    state.save()
    return state


def round_rows(spec: NoisyStudentSpec, state: WorkflowState) -> list[dict[str, Any]]:
    rows = []
    for r in range(spec.rounds + 1):
        trained = state.stages.get("round-0-teacher" if r == 0 else f"round-{r}-student")
        labels = state.stages.get(f"round-{r}-labels", {})
        if trained is None:
            break
        rows.append({"round": r, "model": trained["model"], "top1": trained["top1"],
                     "pseudo_labels": labels.get("size", ""), "pseudo_accuracy": labels.get("accuracy", ""),
                     "labeled_by": labels.get("labeled_by", ""), "model_uri": trained["model_uri"]})
    return rows


@terminal.with_run_log
def run_workflow(spec: NoisyStudentSpec, *, resume: bool = False, until: str | None = None) -> WorkflowState:
    # here: MLflow (seconds to load) is imported once terminal.session has told it to leave the console alone
    from mlflow import MlflowClient

    state = start_or_resume(spec, resume)
    # The whole workflow's log; each training stage also writes its own run folder's.
    terminal.log_to(state.folder / terminal.LOG_FILE)
    # The workflow as stored at its start (paths pinned): a resumed one must not change its stages under it.
    spec = state.stored_spec()
    ensure_synthetic(trial_config(state.spec["base"], {}))
    init_ray()
    client = MlflowClient(tracking_uri=state.tracking_uri)
    try:
        for stage in spec.stages():
            if stage.key in state.stages:
                log.info("%s: done before, skipped", stage.key)
            else:
                log.info("%s: starting", stage.key)
                run = run_labeling_stage if stage.kind == "labels" else run_training_stage
                state.stages[stage.key] = run(spec, state, stage)
                state.save()
                if stage.kind != "labels":
                    client.log_metric(state.parent_run_id, "round/top1", state.stages[stage.key]["top1"],
                                      step=stage.round)
                else:
                    client.log_metric(state.parent_run_id, "round/pseudo_accuracy",
                                      state.stages[stage.key]["accuracy"], step=stage.round)
            if stage.key == until:
                raise WorkflowStopped(f"stopped after {until} (--until); continue with --resume", on_purpose=True)
    except (KeyboardInterrupt, WorkflowStopped) as err:
        client.set_terminated(state.parent_run_id, status="KILLED")
        if isinstance(err, WorkflowStopped):
            raise
        raise WorkflowStopped(f"interrupted; finished stages are kept: continue with --resume "
                              f"({state.folder})") from err
    except BaseException:
        client.set_terminated(state.parent_run_id, status="FAILED")
        raise
    rows = round_rows(spec, state)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    client.log_text(state.parent_run_id, buf.getvalue(), "rounds.csv")
    client.set_tag(state.parent_run_id, "vidssl.final_model_uri", rows[-1]["model_uri"])
    client.set_terminated(state.parent_run_id, status="FINISHED")
    return state


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, float) and value == value else str(value)


@reports_user_errors()
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="workflow YAML (see configs/noisy_student_demo.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the base training config (repeatable)")
    parser.add_argument("--name", help="workflow name (overrides noisy_student.name: a new run needs a new folder)")
    parser.add_argument("--dry-run", action="store_true", help="print the stages and their configs, then exit")
    parser.add_argument("--resume", action="store_true", help="continue this workflow at the stage where it stopped")
    parser.add_argument("--until", metavar="STAGE", help="stop after this stage (e.g. round-1-labels)")
    parser.add_argument("--verbose", action="store_true",
                        help="also print what Ray, Ray Data and MLflow log")
    args = parser.parse_args(argv)
    with terminal.session(args.verbose):
        try:
            spec = load_noisy_student(args.config, args.set)
            if args.name:
                spec = dataclasses.replace(spec, name=check_name(args.name))
            keys = [s.key for s in spec.stages()]
            if args.until is not None and args.until not in keys:
                raise ConfigError(f"--until: unknown stage {args.until!r}; stages: {', '.join(keys)}")
            if args.dry_run:
                print(spec.describe())
                return 0
            state = run_workflow(spec, resume=args.resume, until=args.until)
        except WorkflowStopped as err:
            print(str(err), file=sys.stderr)
            return 0 if err.on_purpose else 130
        # here: MLflow (seconds to load) is imported once terminal.session has told it to leave the console alone
        from workflows.tracking.tracker import ui_command

        rows = round_rows(state.stored_spec(), state)
        print("\nround | model | top-1 % | pseudo-labels | pseudo-label acc % | labeled by")
        for row in rows:
            print(f"{row['round']} | {row['model']} | {_pct(row['top1'])} | {row['pseudo_labels']} | "
                  f"{_pct(row['pseudo_accuracy'])} | {row['labeled_by']}")
        print(f"final student: {rows[-1]['model_uri']}")
        print(f"workflow folder: {state.folder}")
        print(f"MLflow parent run: {state.parent_run_id}")
        print(f"review it:  {ui_command(state.tracking_uri)}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
