"""Self-training on a pretrained backbone, the semi-supervised method of the appearance path: round 0 trains the
stage on the labeled split alone and fits the head; each further round lets the last model label the unlabeled
train videos, trains a fresh stage from the same start on labeled + pseudo-labeled videos, and fits the head again.

    python -m workflows.self_train --config configs/selftrain_appearance.yaml \
        --set model.init=<pretraining run folder> [--set data.labeled_fraction=0.1] [--set self_train.rounds=2]
    python -m workflows.self_train --config ... --dry-run        # check the configs, print the stages

Stages (each a run of its own runner, under <output.storage>/<name>/):
    round-0-stage   workflows.pretrain on the stage config (labeled split; model.init's backbone)
    round-0-head    workflows.train on pretrain.next_config (the head on the stage's frozen backbone)
    round-r-labels  round r-1's head scores the unlabeled train videos (Ray Data); the filter keeps a set,
                    round-r/pseudo_labels.parquet (ssl_core.data.pseudo_labels format)
    round-r-stage   the stage again from model.init (a fresh student, not the teacher continued), with
                    data.pseudo_labels = that set and round 0's labeled split
    round-r-head    its head, which also learns the set (self_train.head_learns_set)
Round 0 alone is the supervised baseline from the same pretraining; what the rounds add is the unlabeled videos'.

MLflow: one parent run (the name), every stage a nested run tagged vidssl.self_train / vidssl.round; the parent
gets round/top1 and round/pseudo_accuracy (the set's accuracy where the truth is known: a metric, never a loss),
each round's set (artifact round-r/pseudo_labels.parquet) and rounds.csv. There is no --resume: a stage takes
minutes, and a run started again takes a new folder, leaving the interrupted one as it was.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssl_core.run_folder import claim_run_dir, stamped
from ssl_core.user_errors import reports_user_errors
from workflows.console import terminal
from workflows.specs.self_train import SelfTrainFile, load_self_train

SPLIT_FILE = "labeled_split.csv"


def stage_names(rounds: int) -> list[str]:
    names = ["round-0-stage", "round-0-head"]
    for r in range(1, rounds + 1):
        names += [f"round-{r}-labels", f"round-{r}-stage", f"round-{r}-head"]
    return names


def run_self_training(file: SelfTrainFile) -> list[dict[str, Any]]:
    """Every stage in order; returns one row per round (top1, pseudo-labeled set size and accuracy)."""
    # here: Ray, torch and MLflow take seconds to load; --dry-run and --help do without them
    from ssl_core.pretrain.config import pretrain_with_overrides
    from workflows.pretrain import run_pretraining
    from workflows.runtime.pseudo_labeling import label_unlabeled
    from workflows.runtime.training import run_training
    from workflows.tracking.tracker import Tracker, check_reachable, resolve_uri

    base = file.stage.base
    uri = resolve_uri(base.tracking.uri)
    check_reachable(uri)
    name, folder = claim_run_dir(base.output.storage, base.tracking.run_name or stamped("self-train"))
    parent = Tracker.start(uri, base.tracking.experiment, name, {"vidssl.self_train": name})
    parent.log_params({"self_train.rounds": file.spec.rounds, "model.init": base.model.init,
                       "head_config": file.head_config,
                       **{f"self_train.pseudo_labels.{k}": v for k, v in vars(file.spec.pseudo_labels).items()}})
    stage_dict = file.stage.to_dict()
    split_file: Path | None = None
    head_run: Path | None = None
    rows: list[dict[str, Any]] = []
    try:
        for r in range(file.spec.rounds + 1):
            tags = {"mlflow.parentRunId": parent.run_id, "vidssl.self_train": name, "vidssl.round": str(r)}
            row: dict[str, Any] = {"round": r}
            extra = [f"output.storage={folder}", f"tracking.run_name=round-{r}-stage", f"tracking.uri={uri}"]
            set_file: Path | None = None
            if head_run is not None and split_file is not None:  # every round after the first
                set_file = folder / f"round-{r}" / "pseudo_labels.parquet"
                print(f"round-{r}-labels: {head_run.name} labels the unlabeled train videos", flush=True)
                labeling = file.head(str(base.model.init), split_file, folder, f"round-{r}-labels")
                made = label_unlabeled(labeling, str(head_run), file.spec.pseudo_labels, set_file,
                                       tracking_uri=uri, made_by={"labeled_by": str(head_run), "round": r,
                                                                  "workflow": name})
                row |= {"pseudo_size": made.stats["size"], "pseudo_accuracy": made.stats.get("accuracy"),
                        "candidates": made.candidates, "skipped": len(made.skipped)}
                print(f"round-{r}-labels: {made.stats['size']} of {made.candidates} videos kept "
                      f"({len(made.skipped)} unreadable)", flush=True)
                parent.log_artifact(set_file, f"round-{r}")
                extra += [f"data.pseudo_labels={set_file}", f"data.labeled_split_file={split_file}"]
            setup = pretrain_with_overrides(stage_dict, extra)
            stage = run_pretraining(setup, extra_tags=tags | {"vidssl.self_train_stage": "stage"})
            split_file = split_file or stage.run_dir / SPLIT_FILE
            row["knn_top1"] = stage.metrics.get("knn/top1")
            head_cfg = file.head(stage.run_dir, split_file, folder, f"round-{r}-head", set_file)
            head = run_training(head_cfg, extra_tags=tags | {"vidssl.self_train_stage": "head"})
            head_run = head.run_dir
            row |= {"top1": head.metrics.get("eval/top1_primary"), "model_uri": head.model_uri,
                    "model_version": head.model_version, "run_dir": str(head.run_dir)}
            parent.log_metrics({k: float(v) for k, v in (("round/top1", row["top1"]),
                                                         ("round/pseudo_accuracy", row.get("pseudo_accuracy")))
                                if v is not None}, step=r)
            rows.append(row)
        parent.log_text(rounds_csv(rows), "rounds.csv")
        parent.finish()
    except BaseException:
        parent.finish("FAILED")
        raise
    return rows


def rounds_csv(rows: Sequence[dict[str, Any]]) -> str:
    keys = ["round", "top1", "knn_top1", "pseudo_size", "pseudo_accuracy", "candidates", "skipped", "model_uri",
            "model_version", "run_dir"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, keys, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _pct(value: Any) -> str:
    return "n/a" if value is None or value != value else f"{100 * float(value):.1f} %"


@reports_user_errors()
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="self-training YAML file (configs/selftrain_appearance.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key, e.g. --set model.init=runs/pretrain/<run> or self_train.rounds=2")
    parser.add_argument("--dry-run", action="store_true", help="check the configs and print the stages")
    parser.add_argument("--verbose", action="store_true", help="also print what Ray and MLflow log")
    args = parser.parse_args(argv)
    file = load_self_train(args.config, args.set)
    base = file.stage.base
    # both heads' configs (round 0's, a later round's with its set) fail here, before Ray
    file.head(base.model.init, "<round 0's labeled split>", base.output.storage, "check")
    if file.spec.rounds:
        file.head(base.model.init, "<round 0's labeled split>", base.output.storage, "check", "<round 1's set>")
    if args.dry_run:
        print(f"self-training on {base.data.root} from {base.model.init}, head: {file.head_config}")
        for stage in stage_names(file.spec.rounds):
            print(f"  {stage}")
        return 0
    with terminal.session(args.verbose):
        rows = run_self_training(file)
    print()
    print("round  top-1     pseudo-labeled (accuracy)")
    for row in rows:
        pseudo = (f"{row['pseudo_size']} of {row['candidates']} ({_pct(row['pseudo_accuracy'])})"
                  if "pseudo_size" in row else "-")
        print(f"{row['round']:>5}  {_pct(row['top1']):>8}  {pseudo}")
    print(f"final model: {rows[-1]['run_dir']}  ({rows[-1]['model_uri']})")
    from workflows.tracking.tracker import resolve_uri, ui_command  # here: MLflow's client loads slowly

    print(f"review it:   {ui_command(resolve_uri(base.tracking.uri))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
