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

No Ray here: parsing, validation (every key checked against the training config, errors name the key)
and the trial count are plain Python, so `--dry-run` answers without starting anything.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssl_core.config import Config, ConfigError, with_overrides

SEARCHES = ("grid", "random", "optuna")
DISTRIBUTIONS = ("uniform", "loguniform", "randint")
SWEEP_KEYS = {"name", "search", "num_samples", "space", "metric", "mode", "asha", "max_concurrent_trials"}
ASHA_KEYS = {"enabled", "grace_period", "reduction_factor"}


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
    enabled: bool = True
    grace_period: int | None = None  # steps; None: the first evaluation (train.eval_every)
    reduction_factor: int = 2


@dataclass
class SweepSpec:
    base: dict[str, Any]  # the resolved training config (with `set` applied), as a dict
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
    where = f"sweep.space.{key}"
    if isinstance(raw, list):
        if not raw:
            raise ConfigError(f"{where}: empty list")
        return Dimension(key, values=list(raw))
    if isinstance(raw, dict) and len(raw) == 1:
        (dist, bounds), = raw.items()
        if dist not in DISTRIBUTIONS:
            raise ConfigError(f"{where}: unknown distribution {dist!r}; use a list or one of {DISTRIBUTIONS}")
        if search == "grid":
            raise ConfigError(f"{where}: a grid search needs a list of values, not {dist}")
        if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, int | float) for b in bounds)):
            raise ConfigError(f"{where}.{dist}: expected [low, high]")
        low, high = float(bounds[0]), float(bounds[1])
        if not low < high or (dist == "loguniform" and low <= 0):
            raise ConfigError(f"{where}.{dist}: need 0 < low < high for loguniform, low < high otherwise")
        return Dimension(key, distribution=dist, bounds=(low, high))
    raise ConfigError(f"{where}: expected a list of values or one of {{uniform|loguniform|randint: [low, high]}}")


def load_base(raw: Any, sweep_file: Path) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str):
        path = Path(raw)
        if not path.exists() and (sweep_file.parent / raw).exists():
            path = sweep_file.parent / raw
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError as err:
            raise ConfigError(f"base: config file not found: {raw}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"base: {raw} must hold a mapping of sections")
        return loaded
    raise ConfigError("base: expected a training config file path or a mapping of its sections")


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> SweepSpec:
    """Parse and validate a sweep file; `overrides` (KEY=VALUE) apply to the base after its `set` list."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"sweep file not found: {path}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    unknown = set(raw) - {"base", "set", "sweep"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown key in {path} (expected base, set, sweep)")
    sets = raw.get("set") or []
    if not isinstance(sets, list):
        raise ConfigError("set: expected a list of KEY=VALUE")
    base_cfg = with_overrides(load_base(raw.get("base") or {}, path), [*map(str, sets), *(overrides or [])])
    s = raw.get("sweep")
    if not isinstance(s, dict):
        raise ConfigError("sweep: missing or not a mapping")
    unknown = set(s) - SWEEP_KEYS
    if unknown:
        raise ConfigError(f"sweep.{sorted(unknown)[0]}: unknown key; known: {sorted(SWEEP_KEYS)}")
    search = s.get("search", "grid")
    if search not in SEARCHES:
        raise ConfigError(f"sweep.search: must be one of {SEARCHES}, got {search!r}")
    space_raw = s.get("space")
    if not isinstance(space_raw, dict) or not space_raw:
        raise ConfigError("sweep.space: expected a mapping of config keys to values or distributions")
    space = [_dimension(str(k), v, search) for k, v in space_raw.items()]
    base = base_cfg.to_dict()
    for dim in space:
        for value in dim.samples():
            try:
                trial_config(base, {dim.key: value})
            except ConfigError as err:
                raise ConfigError(f"sweep.space.{dim.key}: value {value!r} gives an invalid config: {err}") from err
    num_samples = s.get("num_samples", 1)
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"sweep.num_samples: must be an integer >= 1, got {num_samples!r}")
    mode = s.get("mode", "max")
    if mode not in ("max", "min"):
        raise ConfigError(f"sweep.mode: must be max or min, got {mode!r}")
    metric = s.get("metric", "eval/top1_primary")
    if not isinstance(metric, str) or not metric.startswith("eval/"):
        raise ConfigError(f"sweep.metric: must be an evaluation metric (eval/...), got {metric!r}")
    asha_raw = s.get("asha") or {}
    if not isinstance(asha_raw, dict) or set(asha_raw) - ASHA_KEYS:
        raise ConfigError(f"sweep.asha: expected a mapping with keys {sorted(ASHA_KEYS)}")
    asha = AshaSpec(**asha_raw)
    if asha.reduction_factor < 2:
        raise ConfigError("sweep.asha.reduction_factor: must be >= 2")
    if asha.grace_period is not None and asha.grace_period < 1:
        raise ConfigError("sweep.asha.grace_period: must be >= 1 step")
    concurrency = s.get("max_concurrent_trials")
    if concurrency is not None and (not isinstance(concurrency, int) or concurrency < 1):
        raise ConfigError("sweep.max_concurrent_trials: must be null or an integer >= 1")
    name = check_name(str(s.get("name") or path.stem))
    if base_cfg.tracking.registered_model is None:
        raise ConfigError("tracking.registered_model: a sweep registers its champion, so it needs a name")
    return SweepSpec(base, name, search, num_samples, space, metric, mode, asha, concurrency)


def check_name(name: str) -> str:
    if not name or "/" in name or name.startswith("."):
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
