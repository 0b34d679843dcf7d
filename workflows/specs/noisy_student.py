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

No Ray here: parsing, validation (every stage's training config is built and checked, the student sizes
compared) and the stage list are plain Python, so `--dry-run` answers without starting anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ssl_core.config import Config, ConfigError, with_overrides
from workflows.specs.sweep import check_name, load_base, trial_config

STUDENT_ALGORITHM = "noisy_student_offline"
SPEC_KEYS = {"name", "rounds", "teacher", "student", "students", "allow_smaller_student", "pseudo_labels"}
LABEL_KEYS = {"soft", "min_confidence", "top_k_per_class", "clips", "crops"}


@dataclass(frozen=True)
class LabelSpec:
    soft: bool = False  # store and learn full distributions (paper: soft slightly better out of domain)
    min_confidence: float = 0.3  # the paper's ImageNet filter; the student's noise tolerates wrong labels
    top_k_per_class: int | None = None  # class balancing: keep the K most confident per predicted class
    clips: int = 2  # views per video the teacher averages (uniformly spaced clips x centre crops)
    crops: int = 1


@dataclass(frozen=True)
class Stage:
    key: str  # "round-0-teacher", "round-1-labels", "round-1-student", ...
    kind: str  # "teacher" | "labels" | "student"
    round: int


@dataclass(frozen=True)
class NoisyStudentSpec:
    base: dict[str, Any]  # the resolved base training config (Config.to_dict())
    name: str
    rounds: int
    teacher: dict[str, Any]  # config key -> value, round 0
    student: dict[str, Any]  # every student
    students: list[dict[str, Any]]  # per round, last repeats
    labels: LabelSpec

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


def _overrides(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys to values")
    return {str(k): v for k, v in raw.items()}


def _num_params(model_name: str, num_classes: int) -> int:
    from ssl_core.models import build_model

    return sum(p.numel() for p in build_model(model_name, num_classes=num_classes).parameters())


def load_noisy_student(path: str | Path, overrides: list[str] | None = None) -> NoisyStudentSpec:
    """Parse and validate a workflow file; `overrides` (KEY=VALUE) apply to the base after its `set` list."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"workflow file not found: {path}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    unknown = set(raw) - {"base", "set", "noisy_student"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown key in {path} (expected base, set, noisy_student)")
    sets = raw.get("set") or []
    if not isinstance(sets, list):
        raise ConfigError("set: expected a list of KEY=VALUE")
    base = with_overrides(load_base(raw.get("base") or {}, path), [*map(str, sets), *(overrides or [])]).to_dict()
    s = raw.get("noisy_student")
    if not isinstance(s, dict):
        raise ConfigError("noisy_student: missing or not a mapping")
    unknown = set(s) - SPEC_KEYS
    if unknown:
        raise ConfigError(f"noisy_student.{sorted(unknown)[0]}: unknown key; known: {sorted(SPEC_KEYS)}")
    rounds = s.get("rounds", 2)
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"noisy_student.rounds: must be an integer >= 1, got {rounds!r}")
    labels_raw = s.get("pseudo_labels") or {}
    if not isinstance(labels_raw, dict) or set(labels_raw) - LABEL_KEYS:
        raise ConfigError(f"noisy_student.pseudo_labels: expected a mapping with keys {sorted(LABEL_KEYS)}")
    labels = LabelSpec(**labels_raw)
    if not 0 <= labels.min_confidence <= 1:
        raise ConfigError("noisy_student.pseudo_labels.min_confidence: must be in [0, 1]")
    if labels.top_k_per_class is not None and labels.top_k_per_class < 1:
        raise ConfigError("noisy_student.pseudo_labels.top_k_per_class: must be null or >= 1")
    if labels.clips < 1 or labels.crops < 1:
        raise ConfigError("noisy_student.pseudo_labels: clips and crops must be >= 1")
    students = s.get("students") or []
    if not isinstance(students, list):
        raise ConfigError("noisy_student.students: expected a list of mappings (one per round)")
    spec = NoisyStudentSpec(
        base=base,
        name=check_name(str(s.get("name") or path.stem)),
        rounds=rounds,
        teacher=_overrides(s.get("teacher"), "noisy_student.teacher"),
        student=_overrides(s.get("student"), "noisy_student.student"),
        students=[_overrides(x, f"noisy_student.students[{i}]") for i, x in enumerate(students)],
        labels=labels,
    )
    if "algorithm.name" in spec.student or any("algorithm.name" in x for x in spec.students):
        raise ConfigError(f"noisy_student.student: algorithm.name is fixed to {STUDENT_ALGORITHM} (students learn "
                          "the stored pseudo-labeled set)")
    _check_stages(spec, allow_smaller=bool(s.get("allow_smaller_student", False)))
    return spec


def _check_stages(spec: NoisyStudentSpec, *, allow_smaller: bool) -> None:
    previous: Config | None = None
    num_classes = spec.base["data"]["synthetic"]["classes"]  # only the size ratio matters for the check
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
