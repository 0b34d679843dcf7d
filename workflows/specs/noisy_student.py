"""The Noisy Student workflow file: a base training config, the teacher, the students, how sets are labeled.

    python -m workflows.noisy_student --config configs/noisy_student_demo.yaml --dry-run   # prints the stages

    base: demo.yaml                  # a training config file (relative to this file or the cwd), or a mapping
    set: [train.iterations=150]      # overrides on the base, for every stage (like --set)
    noisy_student:
      name: noisy-student-demo       # folder <output.storage>/<name>; MLflow parent run name
      rounds: 2                      # R: teacher, then R x (label the unlabeled set, train a student)
      teacher: {algorithm.name: supervised, model.primary: small3d_w0.5}   # round 0 (labeled clips only)
      student: {model.dropout: 0.3}  # every student (algorithm noisy_student_offline on the stored set)
      students: [{model.primary: small3d}]   # per-round extras (round r uses entry r-1, the last repeats)
      allow_smaller_student: false   # the paper's student is equal-or-larger than its teacher
      pseudo_labels: {soft: false, min_confidence: 0.3, top_k_per_class: null, clips: 2, crops: 1}

No Ray here: parsing (ssl_core.typed_config.load_file, with each section's check() beside its fields), the checks
across the stages (_check_stages: every stage's training config is built and checked, the student sizes compared) and
the stage list are plain Python, so `--dry-run` answers without starting anything.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ssl_core.config import Config, ConfigError, with_overrides
from ssl_core.models import build_model
from ssl_core.typed_config import apply_override, load_file, require, setting
from workflows.specs.sweep import BASE_DOC, SET_DOC, check_name, is_plain_name, load_base, trial_config

STUDENT_ALGORITHM = "noisy_student_offline"


@dataclass(frozen=True)
class LabelSpec:
    soft: bool = setting(False, "store and learn full distributions instead of hard labels (paper: soft slightly "
                                "better out of domain)")
    min_confidence: float = setting(0.3, "keep a video when the teacher's max probability reaches this (the paper's "
                                         "ImageNet filter; the student's noise tolerates wrong labels)")
    top_k_per_class: int | None = setting(None, "class balancing: keep the K most confident per predicted class; "
                                                "null: all")
    top_fraction_per_class: float | None = setting(None, "class balancing by share, for any set size: K = this "
                                                         "fraction x scored videos / classes (0.5: the more confident "
                                                         "half of an even share); null: top_k_per_class decides")
    clips: int = setting(2, "uniformly spaced clips per video the teacher averages")
    crops: int = setting(1, "centre crops per clip the teacher averages")

    def check(self) -> None:
        require(0 <= self.min_confidence <= 1, "min_confidence", "must be in [0, 1]")
        require(self.top_k_per_class is None or self.top_k_per_class >= 1, "top_k_per_class", "must be null or >= 1")
        require(self.top_fraction_per_class is None or 0 < self.top_fraction_per_class <= 1,
                "top_fraction_per_class", "must be null or in (0, 1]")
        require(self.top_fraction_per_class is None or self.top_k_per_class is None, "top_fraction_per_class",
                "set top_k_per_class or top_fraction_per_class, not both")
        require(self.clips >= 1, "clips", "must be >= 1")
        require(self.crops >= 1, "crops", "must be >= 1")


@dataclass
class NoisyStudentSection:
    """The `noisy_student:` section of a workflow file, as written."""

    name: str | None = setting(None, "folder <output.storage>/<name> and MLflow parent run name; null: the file's "
                                     "name")
    rounds: int = setting(2, "R: the teacher, then R x (label the unlabeled set, train a student)")
    teacher: dict[str, Any] = setting(doc="config key -> value for round 0's teacher (the paper's: labeled clips only)",
                                      factory=dict)
    student: dict[str, Any] = setting(doc="config key -> value for every student (the noise: model.dropout, "
                                          "model.stochastic_depth); algorithm.name is fixed to "
                                          "noisy_student_offline", factory=dict)
    students: list[dict[str, Any]] = setting(doc="per-round extras on top of `student`: round r uses entry r-1, the "
                                                 "last repeats", factory=list)
    allow_smaller_student: bool = setting(False, "allow a student smaller than its teacher (the paper's student is "
                                                 "equal-or-larger)")
    pseudo_labels: LabelSpec = setting(doc="how the teacher labels the unlabeled set", factory=LabelSpec)

    def check(self) -> None:
        require(self.rounds >= 1, "rounds", f"must be an integer >= 1, got {self.rounds!r}")
        require(self.name is None or is_plain_name(self.name), "name",
                f"must be a plain folder name, got {self.name!r}")
        fixed = f"algorithm.name is fixed to {STUDENT_ALGORITHM} (students learn the stored pseudo-labeled set)"
        require("algorithm.name" not in self.student, "student", fixed)
        for i, extra in enumerate(self.students):
            require("algorithm.name" not in extra, f"students[{i}]", fixed)


@dataclass(kw_only=True)
class NoisyStudentFile:
    """A Noisy Student workflow file (configs/noisy_student_demo.yaml)."""

    base: str | dict[str, Any] = setting(doc=BASE_DOC, factory=dict)
    set: list[str] = setting(doc=SET_DOC, factory=list)
    noisy_student: NoisyStudentSection = setting(doc="required: the teacher, the students and how the sets are "
                                                     "labeled")


@dataclass(frozen=True)
class Stage:
    key: str  # "round-0-teacher", "round-1-labels", "round-1-student", ...
    kind: str  # "teacher" | "labels" | "student"
    round: int


@dataclass(frozen=True)
class NoisyStudentSpec:
    # The base training config as written, `set` applied, NOT resolved: each stage resolves its own defaults, so a
    # student of another model.primary gets that model's input spec and paired auxiliary (as a sweep's trials do).
    base: dict[str, Any]
    name: str
    rounds: int
    teacher: dict[str, Any]  # config key -> value, round 0
    student: dict[str, Any]  # every student
    students: list[dict[str, Any]]  # per round, last repeats
    labels: LabelSpec

    def resolved_base(self) -> Config:
        return with_overrides(self.base, [])

    def stages(self) -> list[Stage]:
        out = [Stage("round-0-teacher", "teacher", 0)]
        for r in range(1, self.rounds + 1):
            out += [Stage(f"round-{r}-labels", "labels", r), Stage(f"round-{r}-student", "student", r)]
        return out

    def student_point(self, round_: int) -> dict[str, Any]:
        extra = self.students[min(round_, len(self.students)) - 1] if self.students else {}
        return {**self.student, **extra}

    def stage_config(self, stage: Stage, *extra: str) -> Config:
        """The training config of a teacher or student stage (`extra` KEY=VALUE: paths the workflow pins)."""
        if stage.kind == "teacher":
            return trial_config(self.base, self.teacher, *extra)
        if stage.kind == "student":
            soft = yaml.safe_dump(self.labels.soft).strip().removesuffix("...").strip()
            # The labeling stage already filtered the set: a base's tau (e.g. FixMatch's 0.95) would filter it
            # again, so students learn every stored label unless their overrides set algorithm.tau.
            point = {"algorithm.tau": 0.0, **self.student_point(stage.round)}
            return trial_config(self.base, point, f"algorithm.name={STUDENT_ALGORITHM}",
                                f"algorithm.soft={soft}", *extra)
        raise ValueError(f"stage {stage.key} trains nothing")

    def describe(self) -> str:
        lines = [f"noisy student {self.name}: {self.rounds} rounds, pseudo-labels {self.labels}"]
        for stage in self.stages():
            if stage.kind == "labels":
                lines.append(f"  {stage.key}: the round-{stage.round - 1} model labels the unlabeled train videos")
                continue
            cfg = self.stage_config(stage, *_placeholder_paths(stage))
            params = [f"{k} {v}" for k, v in dataclasses.asdict(cfg.algorithm.resolved_params()).items()]
            noise = [f"dropout {cfg.model.dropout}", f"stochastic depth {cfg.model.stochastic_depth}"]
            lines.append(f"  {stage.key}: {cfg.algorithm.name} {cfg.model.primary} ({', '.join(noise + params)}), "
                         f"{cfg.train.iterations} iterations")
        return "\n".join(lines)


def _placeholder_paths(stage: Stage) -> tuple[str, ...]:
    # Validation builds the student's config before any set exists: any path passes the config check.
    return ("data.pseudo_labels=pseudo_labels.parquet",) if stage.kind == "student" else ()


def _num_params(model_name: str, num_classes: int) -> int:
    return sum(p.numel() for p in build_model(model_name, num_classes=num_classes).parameters())


def load_noisy_student(path: str | Path, overrides: list[str] | None = None) -> NoisyStudentSpec:
    """Parse and validate a workflow file; `overrides` (KEY=VALUE) apply to the base after its `set` list."""
    path = Path(path)
    file: NoisyStudentFile = load_file(NoisyStudentFile, path)
    base = copy.deepcopy(load_base(file.base, path))
    for item in [*file.set, *(overrides or [])]:
        apply_override(base, item)
    with_overrides(base, [])  # the base itself is a valid training config: its errors name its keys
    s = file.noisy_student
    spec = NoisyStudentSpec(base=base, name=check_name(s.name or path.stem), rounds=s.rounds, teacher=s.teacher,
                            student=s.student, students=s.students, labels=s.pseudo_labels)
    _check_stages(spec, allow_smaller=s.allow_smaller_student)
    return spec


def _check_stages(spec: NoisyStudentSpec, *, allow_smaller: bool) -> None:
    """The checks across the stages: each one's training config is valid, no student is smaller than its teacher."""
    previous: Config | None = None
    num_classes = spec.resolved_base().data.synthetic.classes  # only the size ratio matters for the check
    for stage in spec.stages():
        if stage.kind == "labels":
            continue
        where = "noisy_student.teacher" if stage.kind == "teacher" else "noisy_student.student(s)"
        try:
            cfg = spec.stage_config(stage, *_placeholder_paths(stage))
        except ConfigError as err:
            raise ConfigError(f"{where}: {stage.key} gives an invalid config: {err}") from err
        if previous is not None and not allow_smaller:
            teacher_size = _num_params(previous.model.primary, num_classes)
            student_size = _num_params(cfg.model.primary, num_classes)
            if student_size < teacher_size:
                raise ConfigError(
                    f"{where}: the {stage.key} model {cfg.model.primary} ({student_size:,} parameters) is smaller "
                    f"than its teacher {previous.model.primary} ({teacher_size:,}); Noisy Student's student is "
                    "equal-or-larger (set noisy_student.allow_smaller_student: true to allow it)")
        previous = cfg
