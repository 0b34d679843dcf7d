"""Typed experiment configuration: YAML sections -> dataclasses, `--set key=value` overrides, validation.

Every problem is reported as one `ConfigError` naming the key path (e.g. `train.lr`), before Ray starts:

    python -m workflows.train --config configs/demo.yaml --set algorithm.tau=0.9 --set train.iterations=50
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ssl_core.algorithms import get_algorithm, list_algorithms
from ssl_core.data.transforms import AugmentConfig
from ssl_core.models import list_models, parse_model_name
from ssl_core.models.init import init_spec_problem, is_mlflow_uri, split_role
from ssl_core.typed_config import (
    ConfigError,
    SyntheticConfig,
    apply_override,
    build,
    coerce,
    join,
    read_config_file,
)


@dataclass
class DataConfig:
    root: str = "data/synth"
    # folder | csv | ucf101 | kinetics (see ssl_core.data.manifest)
    layout: str = "csv"
    csv_path: str | None = None
    ucf_split: int = 1
    # Hold-out fraction for layouts that carry no test split.
    test_fraction: float = 0.2
    # Exactly one of labeled_fraction / labeled_per_class, or a labeled_split_file to reuse.
    labeled_fraction: float | None = 0.1
    labeled_per_class: int | None = None
    labeled_split_file: str | None = None
    split_seed: int = 0
    num_frames: int = 8
    # Frame stride inside a clip: 8 frames at stride 2 span 16 source frames (1 s at 16 fps).
    stride: int = 2
    # Decode-side resize (short side) + centre crop: small uint8 clips travel through the object store.
    size: int = 72
    # Uniformly spaced clips per test video; their softmax scores are averaged.
    eval_clips: int = 2
    # CPUs per decode task; fractional so decode tasks share cores with the training workers.
    decode_cpus: float = 0.5
    # pyav (always there) | torchcodec (optional package + system FFmpeg libraries; can decode on NVIDIA GPUs)
    decoder: str = "pyav"
    # A video whose decode runs longer than this is skipped and counted like a corrupt one.
    decode_timeout_s: float = 60.0
    # Decoded-clip cache (ssl_core/data/clip_cache.py): each video is decoded once at data.size into one uint8
    # memory-mapped file and clips are then sliced from it (the same clips as the decoder for the same seeds),
    # because on a few cores decoding H.264 for every clip is a large share of each step. auto: on when the
    # estimated size fits cache_budget_gb (and the free disk); on: always, an error when it does not fit; off.
    cache: str = "auto"
    # Most bytes (1 GB = 1e9) the cache may take: it is read through the page cache, so keep it within RAM.
    cache_budget_gb: float = 4.0
    # Where caches live (one folder per dataset x size key); None: <output.storage>/.clip_cache. On a
    # multi-node cluster it must be shared storage every node sees at the same path: the driver builds the
    # cache, decode tasks on every node read it.
    cache_dir: str | None = None
    # A pseudo-labeled set (Parquet: path, probs; written by workflows/noisy_student.py): the unlabeled stream
    # becomes exactly these videos, each with its stored teacher probabilities. Only for algorithms that
    # learn stored targets (noisy_student_offline).
    pseudo_labels: str | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    primary: str = "small3d"
    # Only used by algorithms with an auxiliary role (CMPL); CMPL's published pair is r3d_50 + r3d_50_w0.25.
    auxiliary: str = "small3d_w0.5"
    # Frozen teacher for distill / noisy_student: a vidssl checkpoint directory, a run folder (its latest
    # checkpoint) or an MLflow model URI (models:/name@alias, runs:/<id>/model).
    teacher: str | None = None
    # Noise on the trained models (Noisy Student): dropout before the classifier, stochastic depth rate of
    # the last residual block (residual models only).
    dropout: float = 0.0
    stochastic_depth: float = 0.0
    # Pretrained weights to start the primary from (and MPL's trainable teacher, built with the primary's
    # architecture), because from few labels a pretrained backbone (e.g. Kinetics-400) learns far more than a
    # random one. Fresh starts only: a resumed run restores its checkpoint. A vidssl checkpoint directory or run
    # folder (its latest checkpoint; `PATH#auxiliary` takes another model of it), an MLflow model URI
    # (models:/name@alias, models:/name/3, runs:/<id>/model; resolved once by workflows.train into a file under
    # the run folder), or a local PyTorch state-dict file (.pt/.pth, e.g. torchvision's r3d_18 KINETICS400_V1
    # weights for r3d_18, pytorchvideo's slow_r50 for r3d_50): nothing is downloaded at run time. A classifier
    # of another class count starts fresh; another architecture is an error (ssl_core/models/init.py).
    init: str | None = None
    # The same for CMPL's auxiliary, a separate key because its architecture differs from the primary's
    # (r3d_50_w0.25 next to r3d_50); null: random init.
    auxiliary_init: str | None = None


@dataclass
class TrainConfig:
    # Training is counted in iterations, not epochs: the small labeled stream repeats.
    iterations: int = 600
    batch_size: int = 8
    # Unlabeled batch = mu * batch_size (FixMatch's ratio; 7 on images, smaller on CPU).
    mu: int = 2
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_iters: int = 50
    grad_clip: float = 5.0
    log_every: int = 10
    eval_every: int = 200
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    seed: int = 0
    # EMA of the trained weights (0: off). When on, the EMA copies are what is evaluated, registered and
    # deployed (FixMatch, SVFormer), and the pseudo-label teacher with `algorithm.ema_teacher`.
    ema_decay: float = 0.0
    # Optimizer step at which the EMA copies are made (e.g. the end of the supervised warm-up).
    ema_start: int = 0
    # Precise BatchNorm: before each evaluation, recompute the evaluated models' BN statistics over the last
    # N training batches (ssl_core.evaluate.PreciseBN); 0: off.
    precise_bn_batches: int = 0
    # GPU step levers (bench.gpu_step measures each, on and off). channels_last: models and clips in the
    # channels_last_3d memory format (cuDNN's NDHWC kernels). compile: torch.compile the trained models
    # (nn.Module.compile, in place: checkpoints keep their keys); off until measured on the target GPU, its
    # first steps take minutes. On CUDA the optimizer is always the fused one and cuDNN autotunes.
    channels_last: bool = False
    compile: bool = False


@dataclass
class ScalingConfig:
    num_workers: int = 1
    use_gpu: bool = False
    # Fractional CPUs leave room for Ray Data's decode tasks (a 2-core machine starves otherwise).
    cpus_per_worker: float = 1.0
    # torch intra-op threads per worker.
    torch_threads: int = 1
    # Training processes keep freed memory for reuse (glibc malloc thresholds raised: ssl_core/allocator.py), so
    # a step's big tensors are not page-faulted in afresh every step. Off: the allocator's defaults.
    keep_freed_memory: bool = True
    # Worker-group restarts (from the latest checkpoint) after a training worker dies; -1: unlimited, 0: none.
    max_failures: int = 2
    # How Ray places the training workers: PACK fills a node first; SPREAD puts them on different nodes where
    # it can (a lost node then takes fewer workers with it); STRICT_* fail instead of falling back.
    placement_strategy: str = "PACK"


@dataclass
class TrackingConfig:
    # None: $MLFLOW_TRACKING_URI if set, else a SQLite file in the working directory.
    uri: str | None = None
    experiment: str = "vidssl"
    # Model Registry name of the primary model (a new version per run); null: logged, not registered.
    registered_model: str | None = "vidssl-primary"
    run_name: str | None = None


@dataclass
class OutputConfig:
    # Ray Train storage: one folder per run holding its checkpoints and the labeled-split file.
    storage: str = "runs"


@dataclass
class AlgorithmConfig:
    name: str = "cmpl"
    # Flat hyper-parameters (`algorithm.tau`, the form of --set and sweeps): any field a registered
    # algorithm's Params declares; they apply to the chosen algorithm and win over its section.
    params: dict[str, Any] = field(default_factory=dict)
    # Per-algorithm sections (`algorithm.fixmatch.lambda_u`): each algorithm's own values, so one file holds
    # a setting for every method and a value meant for fixmatch never reaches MixMatch.
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        """The chosen algorithm's hyper-parameters set in the config: its section, then the flat keys it
        declares."""
        names = {f.name for f in dataclasses.fields(get_algorithm(self.name).Params)}
        flat = {k: v for k, v in self.params.items() if k in names}
        return {**self.sections.get(self.name, {}), **flat}

    def resolved_params(self) -> Any:
        """The chosen algorithm's Params instance (defaults for what the config leaves unset)."""
        return get_algorithm(self.name).Params(**self.values())


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """`section.key` -> value, for MLflow params and Tune search spaces."""
        return _flatten(self.to_dict())


# --- loading -------------------------------------------------------------------------------------


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML file (or the defaults when path is None), apply `key=value` overrides, validate."""
    raw = read_config_file(path) if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    return from_dict(raw)


def with_overrides(raw: dict[str, Any], overrides: typing.Sequence[str]) -> Config:
    """A config from a resolved dict (e.g. a run's stored config) plus `key=value` overrides."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        apply_override(raw, item)
    return from_dict(raw)


def pin_paths(raw: dict[str, Any], tracking_uri: str) -> dict[str, Any]:
    """A resolved config dict (Config.to_dict()) with every path absolute and the tracking URI fixed: runs
    started later from another working directory (Tune actors, resumed workflows) see the same files."""
    out = copy.deepcopy(raw)
    data = out["data"]
    for key in ("root", "csv_path", "labeled_split_file", "pseudo_labels", "cache_dir"):
        if data.get(key):
            data[key] = str(Path(data[key]).expanduser().resolve())
    out["output"]["storage"] = str(Path(out["output"]["storage"]).expanduser().resolve())
    model = out.get("model") or {}
    for key in ("init", "auxiliary_init"):  # a local source (`PATH#role` keeps its role); MLflow URIs stay
        if model.get(key) and not is_mlflow_uri(model[key]):
            path, role = split_role(model[key])
            model[key] = str(Path(path).expanduser().resolve()) + (f"#{role}" if role else "")
    out["tracking"]["uri"] = tracking_uri
    return out


def from_dict(raw: dict[str, Any]) -> Config:
    raw = {k: v for k, v in raw.items()}
    algo_raw = raw.pop("algorithm", {}) or {}
    if not isinstance(algo_raw, dict):
        raise ConfigError("algorithm: expected a mapping")
    data_raw = raw.get("data")
    if isinstance(data_raw, dict) and isinstance(data_raw.get("cache"), bool):
        # YAML 1.1 reads a bare `on` / `off` as true / false: data.cache takes them as the words written.
        raw["data"] = {**data_raw, "cache": "on" if data_raw["cache"] else "off"}
    cfg: Config = build(Config, raw, "")
    cfg.algorithm = _build_algorithm(algo_raw)
    validate(cfg)
    return cfg


def _build_algorithm(raw: dict[str, Any]) -> AlgorithmConfig:
    raw = dict(raw)
    name = raw.pop("name", AlgorithmConfig.name)
    known = {n for n, _, _ in list_algorithms()}
    if name not in known:
        raise ConfigError(f"algorithm.name: unknown algorithm {name!r}; choose from {sorted(known)}")
    sections_raw = dict(raw.pop("sections", {}) or {})  # the stored form (Config.to_dict)
    for key in [k for k in raw if k in known]:  # `algorithm.fixmatch.tau` (a file or --set) joins the stored form
        section = raw.pop(key)
        stored = sections_raw.get(key, {})
        sections_raw[key] = {**stored, **section} if isinstance(section, dict) and isinstance(stored, dict) else section
    params = dict(raw.pop("params", {}) or {})
    params.update(raw)  # `algorithm.tau` and `algorithm.params.tau` mean the same
    # A flat key is valid if some registered algorithm declares it, so one YAML serves `--set algorithm.name=`.
    declared: dict[str, type] = {}
    for _, _, params_cls in list_algorithms():
        for key, hint in _param_types(params_cls).items():
            declared.setdefault(key, hint)
    checked = {}
    for key, value in params.items():
        if key not in declared:
            raise ConfigError(f"algorithm.{key}: unknown key; known: {sorted(declared)} (or a section named "
                              f"after an algorithm: {sorted(known)})")
        checked[key] = coerce(value, declared[key], f"algorithm.{key}")
    sections: dict[str, dict[str, Any]] = {}
    for algo, section in sections_raw.items():
        if algo not in known:
            raise ConfigError(f"algorithm.sections.{algo}: unknown algorithm; choose from {sorted(known)}")
        if not isinstance(section, dict):
            raise ConfigError(f"algorithm.{algo}: expected a mapping of {algo}'s hyper-parameters")
        own = _param_types(get_algorithm(algo).Params)
        for key in section:
            if key not in own:
                raise ConfigError(f"algorithm.{algo}.{key}: {algo} has no such hyper-parameter; known: {sorted(own)}")
        sections[algo] = {k: coerce(v, own[k], f"algorithm.{algo}.{k}") for k, v in section.items()}
        try:  # every section is checked, not only the chosen one: `--set algorithm.name=` may pick it later
            get_algorithm(algo).Params(**sections[algo])
        except (TypeError, ValueError) as err:
            raise ConfigError(f"algorithm.{algo}: {err}") from err
    return AlgorithmConfig(name=name, params=checked, sections=sections)


def _param_types(params_cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(params_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(params_cls)}


# --- validation ----------------------------------------------------------------------------------

LAYOUTS = ("folder", "csv", "ucf101", "kinetics")
DECODERS = ("pyav", "torchcodec")
CACHE_MODES = ("auto", "on", "off")
PLACEMENTS = ("auto", "device", "data")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def validate(cfg: Config) -> None:
    d, t, s, a = cfg.data, cfg.train, cfg.scaling, cfg.augment
    _check(d.layout in LAYOUTS, "data.layout", f"must be one of {LAYOUTS}, got {d.layout!r}")
    given = [k for k in ("labeled_fraction", "labeled_per_class") if getattr(d, k) is not None]
    if d.labeled_split_file is None:
        _check(len(given) == 1, "data.labeled_fraction",
               "set exactly one of data.labeled_fraction / data.labeled_per_class (or labeled_split_file)")
    if d.labeled_fraction is not None:
        _check(0 < d.labeled_fraction <= 1, "data.labeled_fraction", f"must be in (0, 1], got {d.labeled_fraction}")
    if d.labeled_per_class is not None:
        _check(d.labeled_per_class >= 1, "data.labeled_per_class", "must be >= 1")
    _check(0 < d.test_fraction < 1, "data.test_fraction", "must be in (0, 1)")
    _check(d.ucf_split in (1, 2, 3), "data.ucf_split", "must be 1, 2 or 3")
    for key in ("num_frames", "stride", "size", "eval_clips"):
        _check(getattr(d, key) >= 1, f"data.{key}", "must be >= 1")
    _check(d.decode_cpus > 0, "data.decode_cpus", "must be > 0")
    _check(d.decoder in DECODERS, "data.decoder", f"must be one of {DECODERS}, got {d.decoder!r}")
    _check(d.decode_timeout_s > 0, "data.decode_timeout_s", "must be > 0")
    _check(d.cache in CACHE_MODES, "data.cache", f"must be one of {CACHE_MODES}, got {d.cache!r}")
    _check(d.cache_budget_gb > 0, "data.cache_budget_gb", f"must be > 0, got {d.cache_budget_gb}")
    _check(d.cache_dir is None or bool(str(d.cache_dir).strip()), "data.cache_dir",
           "must be a folder path or null (null: <output.storage>/.clip_cache)")
    if d.decoder == "torchcodec":
        from ssl_core.data.decode import torchcodec_unavailable

        why = torchcodec_unavailable()  # None, or the install hint (it starts with "data.decoder: ")
        _check(why is None, "data.decoder", str(why).removeprefix("data.decoder: "))
    _check(a.placement in PLACEMENTS, "augment.placement", f"must be one of {PLACEMENTS}, got {a.placement!r}")
    _check(a.crop_size <= d.size, "augment.crop_size", f"must be <= data.size ({d.size})")
    _check(0 < a.min_scale <= 1, "augment.min_scale", "must be in (0, 1]")
    _check(0 <= a.erasing_p <= 1, "augment.erasing_p", "must be in [0, 1]")
    for key in ("primary", "auxiliary"):
        name = getattr(cfg.model, key)
        try:
            parse_model_name(name)
        except KeyError:
            _check(False, f"model.{key}", f"unknown model {name!r}; choose from {[n for n, _ in list_models()]}")
    algorithm_cls = get_algorithm(cfg.algorithm.name)
    frozen = algorithm_cls.frozen_roles
    _check(algorithm_cls.needs_targets == (d.pseudo_labels is not None), "data.pseudo_labels",
           f"algorithm {cfg.algorithm.name} needs a pseudo-labeled set (a Parquet file from workflows.noisy_student)"
           if algorithm_cls.needs_targets else
           f"only algorithms that learn stored targets (noisy_student_offline) read it; {cfg.algorithm.name} would "
           "ignore it")
    _check(not frozen or cfg.model.teacher is not None, "model.teacher",
           f"algorithm {cfg.algorithm.name} needs a teacher: a checkpoint directory or models:/<name>@<alias>")
    _check(0 <= cfg.model.dropout < 1, "model.dropout", "must be in [0, 1)")
    _check(0 <= cfg.model.stochastic_depth < 1, "model.stochastic_depth", "must be in [0, 1)")
    for key in ("init", "auxiliary_init"):
        spec = getattr(cfg.model, key)
        why = None if spec is None else init_spec_problem(spec)
        _check(why is None, f"model.{key}", str(why))
    p = {**cfg.algorithm.params, **cfg.algorithm.values()}
    if "tau" in p:
        _check(0 <= p["tau"] <= 1, "algorithm.tau", f"must be in [0, 1], got {p['tau']}")
    for key, value in p.items():
        if key.startswith("lambda") and isinstance(value, float):
            _check(value >= 0, f"algorithm.{key}", "must be >= 0")
    try:
        cfg.algorithm.resolved_params()
    except (TypeError, ValueError) as err:
        raise ConfigError(f"algorithm: {err}") from err
    _check(t.iterations >= 1, "train.iterations", "must be >= 1")
    _check(t.batch_size >= 1, "train.batch_size", "must be >= 1")
    _check(t.mu >= 1, "train.mu", f"must be >= 1, got {t.mu}")
    _check(t.optimizer in ("sgd", "adamw"), "train.optimizer", "must be sgd or adamw")
    _check(t.lr > 0, "train.lr", "must be > 0")
    _check(t.warmup_iters >= 0, "train.warmup_iters", "must be >= 0")
    _check(0 <= t.ema_decay < 1, "train.ema_decay", f"must be in [0, 1), got {t.ema_decay}")
    _check(t.ema_start >= 0, "train.ema_start", "must be >= 0")
    _check(t.precise_bn_batches >= 0, "train.precise_bn_batches", "must be >= 0")
    for key in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
        _check(getattr(t, key) >= 1, f"train.{key}", "must be >= 1")
    _check(s.num_workers >= 1, "scaling.num_workers", "must be >= 1")
    _check(s.cpus_per_worker > 0, "scaling.cpus_per_worker", "must be > 0")
    _check(s.torch_threads >= 1, "scaling.torch_threads", "must be >= 1")
    _check(s.max_failures >= -1, "scaling.max_failures", "must be >= 0, or -1 for unlimited restarts")
    _check(s.placement_strategy in PLACEMENT_STRATEGIES, "scaling.placement_strategy",
           f"must be one of {', '.join(PLACEMENT_STRATEGIES)}")
    syn = d.synthetic
    _check(syn.classes >= 2, "data.synthetic.classes", "must be >= 2")
    _check(syn.videos_per_class >= 2, "data.synthetic.videos_per_class", "must be >= 2")


def _check(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{path}: {message}")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = join(prefix, key)
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
