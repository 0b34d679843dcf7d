"""The self-training file: a pretraining config for the stage (the labels term on a pretrained backbone) plus a
`self_train:` section; the head's training config is the stage's pretrain.next_config.

    python -m workflows.self_train --config configs/selftrain_appearance.yaml --set model.init=<run> --dry-run

    pretrain: {labeled_weight: 1.0, objective_weight: 0.0, next_config: configs/finetune_appearance.yaml, ...}
    self_train:
      rounds: 1                      # R: round 0 (the labels), then R x (label the unlabeled set, a fresh stage)
      pseudo_labels: {min_confidence: 0.0, top_k_per_class: null, clips: 4, crops: 1}
      head_learns_set: true          # a round >= 1's head learns the labeled split and the round's set

No Ray here: `--dry-run` checks the stage's and the head's configs and prints the stages without starting anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssl_core.config import Config, ConfigError, load_config, read_with_overrides
from ssl_core.pretrain.config import PretrainSetup, pretrain_from_dict
from ssl_core.typed_config import build, read_config_file, require, setting
from workflows.specs.noisy_student import LabelSpec

SECTION = "self_train"


@dataclass(frozen=True)
class SelfTrainSpec:
    rounds: int = setting(1, "R: round 0 learns the labeled split alone (the supervised baseline from the same "
                             "pretraining); each further round first labels the unlabeled train videos with the last "
                             "model, then trains a fresh stage from model.init on labeled + pseudo-labeled videos")
    pseudo_labels: LabelSpec = setting(doc="how the last model labels the unlabeled set (soft must stay false: the "
                                           "stage learns hard labels)", factory=LabelSpec)
    head_learns_set: bool = setting(True, "the head of a round >= 1 also learns that round's pseudo-labeled set "
                                          "(noisy_student_offline on the frozen backbone: the labeled split plus "
                                          "the set under strong views); false: the labeled split alone")
    head_set: list[str] = setting(doc="key=value overrides on the head's training config (pretrain.next_config), "
                                      "e.g. train.iterations=300", factory=list)

    def check(self) -> None:
        require(self.rounds >= 0, "rounds", f"must be >= 0, got {self.rounds}")
        require(not self.pseudo_labels.soft, "pseudo_labels.soft", "the stage's classifier learns hard labels")


@dataclass(frozen=True)
class SelfTrainFile:
    """A self-training file as read: the stage's pretraining setup and the self_train section."""
    stage: PretrainSetup
    spec: SelfTrainSpec

    @property
    def head_config(self) -> str:
        return self.stage.pretrain.next_config

    def head(self, init: str | Path, split_file: str | Path, storage: str | Path, run_name: str,
             pseudo_labels: str | Path | None = None) -> Config:
        """The head's training config on a finished stage: its backbone (model.init), its labeled split, the
        stage's videos, MLflow store and experiment, [the round's pseudo-labeled set, with head_learns_set], then
        self_train.head_set."""
        base = self.stage.base
        overrides = [f"model.primary={base.model.primary}", f"model.init={init}",
                     f"data.labeled_split_file={split_file}", f"data.root={base.data.root}",
                     f"data.layout={base.data.layout}", f"output.storage={storage}",
                     f"tracking.run_name={run_name}", f"tracking.experiment={base.tracking.experiment}"]
        if pseudo_labels is not None and self.spec.head_learns_set:
            overrides += ["algorithm.name=noisy_student_offline", f"data.pseudo_labels={pseudo_labels}"]
        if base.data.csv_path:
            overrides.append(f"data.csv_path={base.data.csv_path}")
        if base.tracking.uri:
            overrides.append(f"tracking.uri={base.tracking.uri}")
        return load_config(self.head_config, [*overrides, *self.spec.head_set])


def load_self_train(path: str | Path, overrides: Sequence[str] = ()) -> SelfTrainFile:
    """The file plus `key=value` overrides (self_train.* included), checked: the stage learns labels, its
    next_config is a training config, and that config builds on a stage run."""
    raw: dict[str, Any] = read_with_overrides(path, overrides)
    if SECTION not in raw:
        raise ConfigError(f"{path}: no `{SECTION}:` section (see configs/selftrain_appearance.yaml)")
    spec = build(SelfTrainSpec, raw.pop(SECTION) or {}, SECTION)
    stage = pretrain_from_dict(raw)
    p = stage.pretrain
    if p.labeled_weight <= 0:
        raise ConfigError("pretrain.labeled_weight: self-training's stage learns the labels (and the pseudo-labels): "
                          "must be > 0")
    if not stage.base.model.init:
        raise ConfigError("model.init: self-training starts every stage from a pretrained backbone: --set "
                          "model.init=<pretraining run folder>")
    if stage.base.data.pseudo_labels is not None:
        raise ConfigError("data.pseudo_labels: self-training makes each round's set itself; leave it null")
    if "pretrain" in read_config_file(p.next_config):
        raise ConfigError(f"pretrain.next_config: {p.next_config} is a pretraining config; self-training fits the "
                          "head with a training config (e.g. configs/finetune_appearance.yaml)")
    return SelfTrainFile(stage, spec)
