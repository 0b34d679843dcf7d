"""The sweep file: a base training config, the search space over its keys, and how Tune searches it.

    python -m workflows.sweep --config configs/sweep_demo.yaml --dry-run     # prints what this parses

    base: configs/demo.yaml        # a training config file, or an inline mapping of its sections
    set: [train.iterations=150]    # overrides on the base (like --set)
    sweep:
      name: sweep-demo             # folder <output.storage>/<name>; MLflow parent run name
      search: grid                 # grid | random | optuna
      num_samples: 1               # grid: repeats of the whole grid; random / optuna: number of trials
      space:                       # any training config key
        algorithm.name: [fixmatch, cmpl]           # a list: grid values (a choice for random / optuna)
        algorithm.tau: {uniform: [0.7, 0.99]}      # a distribution: uniform | loguniform | randint
      metric: eval/top1_primary
      mode: max
      asha: {enabled: true, grace_period: null, reduction_factor: 2}
      max_concurrent_trials: null  # null: as many as the cluster's free CPUs / GPUs fit

No Ray here: parsing (ssl_core.typed_config.load_file, with each section's check() beside its fields), the checks
against the base config (check_against_base; errors name the key) and the trial count are plain Python, so
`--dry-run` answers without starting anything.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssl_core.config import Config, ConfigError, with_overrides
from ssl_core.typed_config import FieldError, apply_override, load_file, read_config_file, require, setting

SEARCHES = ("grid", "random", "optuna")
DISTRIBUTIONS = ("uniform", "loguniform", "randint")
BASE_DOC = ("the training config: a file (relative to this file or the working directory) or an inline mapping of "
            "its sections")
SET_DOC = "overrides on the base, KEY=VALUE (like --set); the command line's --set apply after them"


@dataclass
class Dimension:
    key: str  # a training config key, e.g. algorithm.tau
    values: list[Any] | None = None  # grid values / choices
    distribution: str | None = None  # uniform | loguniform | randint
    bounds: tuple[float, float] | None = None

    def describe(self) -> str:
        if self.values is not None:
            return f"{self.key}: {self.values}"
        assert self.bounds is not None
        return f"{self.key}: {self.distribution}({self.bounds[0]}, {self.bounds[1]})"

    def samples(self) -> list[Any]:
        """Values to validate against the training config: the list, or both bounds."""
        if self.values is not None:
            return self.values
        assert self.bounds is not None
        low, high = self.bounds
        return [int(low), int(high) - 1] if self.distribution == "randint" else [low, high]


@dataclass
class AshaSpec:
    enabled: bool = setting(True, "ASHA early stopping on the training step (false: every trial runs to the end)")
    grace_period: int | None = setting(None, "steps before a trial can be stopped; null: the first evaluation "
                                             "(train.eval_every)")
    reduction_factor: int = setting(2, "ASHA keeps 1 / reduction_factor of the trials at each rung")

    def check(self) -> None:
        require(self.reduction_factor >= 2, "reduction_factor", "must be >= 2")
        require(self.grace_period is None or self.grace_period >= 1, "grace_period", "must be >= 1 step")


@dataclass
class SweepSection:
    """The `sweep:` section of a sweep file, as written."""

    name: str | None = setting(None, "folder <output.storage>/<name> and MLflow parent run name; null: the file's "
                                     "name")
    search: str = setting("grid", "grid | random | optuna")
    num_samples: int = setting(1, "grid: repeats of the whole grid; random / optuna: number of trials")
    space: dict[str, Any] = setting(doc="training config key -> a list (grid values; a choice for random / optuna) "
                                        "or a distribution {uniform|loguniform|randint: [low, high]}", factory=dict)
    metric: str = setting("eval/top1_primary", "the evaluation metric (eval/...) trials are ranked by")
    mode: str = setting("max", "max or min of the metric")
    asha: AshaSpec = setting(doc="early stopping of the weaker trials", factory=AshaSpec)
    max_concurrent_trials: int | None = setting(None, "trials at a time; null: as many as the cluster's free CPUs / "
                                                      "GPUs fit")

    def check(self) -> None:
        require(self.search in SEARCHES, "search", f"must be one of {SEARCHES}, got {self.search!r}")
        require(bool(self.space), "space", "expected a mapping of config keys to values or distributions")
        self.dimensions()  # each dimension checks its list or distribution
        require(self.num_samples >= 1, "num_samples", f"must be an integer >= 1, got {self.num_samples!r}")
        require(self.mode in ("max", "min"), "mode", f"must be max or min, got {self.mode!r}")
        require(self.metric.startswith("eval/"), "metric",
                f"must be an evaluation metric (eval/...), got {self.metric!r}")
        require(self.max_concurrent_trials is None or self.max_concurrent_trials >= 1, "max_concurrent_trials",
                "must be null or an integer >= 1")
        require(self.name is None or is_plain_name(self.name), "name",
                f"must be a plain folder name, got {self.name!r}")

    def dimensions(self) -> list[Dimension]:
        return [_dimension(key, raw, self.search) for key, raw in self.space.items()]


@dataclass(kw_only=True)
class SweepFile:
    """A sweep file (configs/sweep_demo.yaml)."""

    base: str | dict[str, Any] = setting(doc=BASE_DOC, factory=dict)
    set: list[str] = setting(doc=SET_DOC, factory=list)
    sweep: SweepSection = setting(doc="required: the search space over the base's keys and how Tune searches it")


@dataclass
class SweepSpec:
    # The training config as written, `set` applied, NOT resolved: each trial resolves its own defaults, so a swept
    # model.primary brings its input spec (data.num_frames, augment.crop_size, ...) and its paired auxiliary.
    base: dict[str, Any]
    name: str
    search: str
    num_samples: int
    space: list[Dimension]
    metric: str = "eval/top1_primary"
    mode: str = "max"
    asha: AshaSpec = field(default_factory=AshaSpec)
    max_concurrent_trials: int | None = None

    @property
    def base_config(self) -> Config:
        return with_overrides(self.base, [])

    def num_trials(self) -> int:
        if self.search == "grid":
            return math.prod(len(d.values or ()) for d in self.space) * self.num_samples
        return self.num_samples

    def grid(self) -> list[dict[str, Any]]:
        """Every point of a grid search (the search space as Tune will enumerate it, before repeats)."""
        keys = [d.key for d in self.space]
        combos = itertools.product(*(d.values or () for d in self.space))
        return [dict(zip(keys, combo, strict=True)) for combo in combos]

    def describe(self) -> str:
        lines = [f"sweep {self.name}: {self.search} search, {self.num_trials()} trials, "
                 f"metric {self.metric} ({self.mode})"]
        lines += [f"  {d.describe()}" for d in self.space]
        if self.asha.enabled:
            grace = self.asha.grace_period or self.base_config.train.eval_every
            lines.append(f"  ASHA on step: grace period {grace}, reduction factor {self.asha.reduction_factor}, "
                         f"max {self.base_config.train.iterations}")
        else:
            lines.append("  ASHA off: every trial runs to the end")
        concurrency = self.max_concurrent_trials or "as many as the cluster's free resources fit"
        lines.append(f"  concurrent trials: {concurrency}")
        return "\n".join(lines)


def _dimension(key: str, raw: Any, search: str) -> Dimension:
    where = f"space.{key}"  # relative to the sweep section: its check() reports it
    if isinstance(raw, list):
        require(bool(raw), where, "empty list")
        return Dimension(key, values=list(raw))
    if isinstance(raw, dict) and len(raw) == 1:
        (dist, bounds), = raw.items()
        require(dist in DISTRIBUTIONS, where, f"unknown distribution {dist!r}; use a list or one of {DISTRIBUTIONS}")
        require(search != "grid", where, f"a grid search needs a list of values, not {dist}")
        require(isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, int | float) for b in bounds),
                f"{where}.{dist}", "expected [low, high]")
        low, high = float(bounds[0]), float(bounds[1])
        require(low < high and (dist != "loguniform" or low > 0), f"{where}.{dist}",
                "need 0 < low < high for loguniform, low < high otherwise")
        return Dimension(key, distribution=dist, bounds=(low, high))
    raise FieldError(where, "expected a list of values or one of {uniform|loguniform|randint: [low, high]}")


def load_base(raw: str | dict[str, Any], spec_file: Path) -> dict[str, Any]:
    """The base training config's raw mapping: inline, or read from a file (relative to `spec_file` or the cwd)."""
    if isinstance(raw, dict):
        return raw
    path = Path(raw)
    if not path.exists() and (spec_file.parent / raw).exists():
        path = spec_file.parent / raw
    try:
        return read_config_file(path)
    except ConfigError as err:
        raise ConfigError(f"base: {err}") from err


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Parse and validate a sweep file; `overrides` (KEY=VALUE) apply to the base after its `set` list."""
    path = Path(path)
    file: SweepFile = load_file(SweepFile, path)
    base = copy.deepcopy(load_base(file.base, path))
    for item in [*file.set, *(overrides or [])]:
        apply_override(base, item)
    base_cfg = with_overrides(base, [])
    s = file.sweep
    spec = SweepSpec(base, check_name(s.name or path.stem), s.search, s.num_samples, s.dimensions(),
                     s.metric, s.mode, s.asha, s.max_concurrent_trials)
    check_against_base(spec, base_cfg)
    return spec


def check_against_base(spec: SweepSpec, base_cfg: Config) -> None:
    """The checks between the sweep section and its base config: every swept value gives a valid training config,
    and the champion has a registry name."""
    for dim in spec.space:
        for value in dim.samples():
            try:
                trial_config(spec.base, {dim.key: value})
            except ConfigError as err:
                raise ConfigError(f"sweep.space.{dim.key}: value {value!r} gives an invalid config: {err}") from err
    if base_cfg.tracking.registered_model is None:
        raise ConfigError("tracking.registered_model: a sweep registers its champion, so it needs a name")


def is_plain_name(name: str) -> bool:
    return bool(name) and "/" not in name and not name.startswith(".")


def check_name(name: str) -> str:
    if not is_plain_name(name):
        raise ConfigError(f"sweep.name: must be a plain folder name, got {name!r}")
    return name


def trial_config(base: dict[str, Any], point: dict[str, Any], *extra: str) -> Config:
    """The training config of one trial: the base with the sampled point (and `extra` KEY=VALUE) applied."""
    overrides = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                 for k, v in point.items()]
    # A swept labeled fraction replaces a per-class count from the base, and the other way round.
    if "data.labeled_fraction" in point:
        overrides.append("data.labeled_per_class=null")
    elif "data.labeled_per_class" in point:
        overrides.append("data.labeled_fraction=null")
    return with_overrides(base, [*overrides, *extra])
