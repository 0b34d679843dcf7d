"""Typed experiment configuration: YAML sections -> dataclasses, `--set key=value` overrides, validation.

Each section checks its own keys in a `check()` beside its fields; `check_across_sections` holds the few checks
that need two sections. Every problem is reported as one `ConfigError` naming the key path (e.g. `train.lr`),
before Ray starts. The key reference (docs/config.md) is generated from the field docs:

    python -m workflows.train --config configs/demo.yaml --set algorithm.tau=0.9 --set train.iterations=50
    vidssl config --explain train
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ssl_core.algorithms import get_algorithm, list_algorithms
from ssl_core.auxiliary_pairing import paired_auxiliary
from ssl_core.data.decode_base import DEFAULT_MAX_DECODE_PIXELS
from ssl_core.data.transforms import AugmentConfig
from ssl_core.models import list_models, model_inputs, parse_model_name
from ssl_core.models.init_spec import init_spec_problem, is_mlflow_uri, named_source, split_role
from ssl_core.typed_config import (
    ConfigError,
    SyntheticConfig,
    apply_override,
    build,
    checked,
    coerce,
    join,
    read_config_file,
    require,
    setting,
)

LAYOUTS = ("folder", "csv", "ucf101", "kinetics")
DECODERS = ("pyav", "torchcodec")
CACHE_MODES = ("auto", "on", "off")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@dataclass
class DataConfig:
    root: str = setting("data/synth", "dataset folder")
    layout: str = setting("csv", "dataset layout: folder (root/<class>/*.mp4), csv (path,label[,split]), ucf101, "
                                 "kinetics (ssl_core/data/manifest.py)")
    csv_path: str | None = setting(None, "the CSV of the csv (default: <root>/manifest.csv) and kinetics layouts")
    infer_classes: bool = setting(False, "csv layout without <root>/classes.txt: every label of the CSV is a class. "
                                         "false: the classes are the train rows' labels, and a test row with another "
                                         "label (a typo would become a class) is an error naming the row")
    ucf_split: int = setting(1, "UCF-101 official split 1, 2 or 3")
    test_fraction: float = setting(0.2, "class-stratified hold-out for layouts that carry no test split")
    labeled_fraction: float | None = setting(0.1, "labeled subset as a fraction of the train videos (class-"
                                                  "balanced, >= 1 per class); exactly one of this / "
                                                  "labeled_per_class, unless labeled_split_file is given")
    labeled_per_class: int | None = setting(None, "labeled subset as k videos per class (from split_seed)")
    labeled_split_file: str | None = setting(None, "reuse this labeled-split file; if it does not exist yet, the "
                                                   "new split is written there")
    split_seed: int = setting(0, "seed of the labeled / unlabeled split")
    num_frames: int = setting(8, "frames per clip (random position for training)")
    stride: int = setting(2, "frame stride inside a clip: 8 frames at stride 2 span 16 source frames (1 s at 16 fps)")
    size: int = setting(72, "decode-side short-side resize + centre crop: small uint8 clips travel through the "
                            "object store")
    eval_clips: int = setting(2, "uniformly spaced clips per test video; their softmax scores are averaged")
    decode_cpus: float = setting(0.5, "CPUs per Ray Data decode task; fractional so decode tasks share cores with "
                                      "the training workers")
    decoder: str = setting("pyav", "pyav (always there) or torchcodec (optional package + system FFmpeg "
                                   "libraries, `make install-torchcodec`; can decode on NVIDIA GPUs)")
    decode_timeout_s: float = setting(60.0, "a video whose decode runs longer than this is skipped and counted "
                                            "like a corrupt one")
    max_decode_pixels: int | None = setting(DEFAULT_MAX_DECODE_PIXELS,
                                            "a video whose frames have more pixels (width x height, from the "
                                            "stream header, before any frame is decoded) is skipped and counted "
                                            "like a corrupt one: decoder memory grows with the resolution. "
                                            "Default 4096 x 4096 (DCI 4K, UHD and vertical 4K pass, 8K does not); "
                                            "null: no cap")
    # On a few cores decoding H.264 for every clip is a large share of each step: the cache decodes each video once.
    cache: str = setting("auto", "decoded-clip cache (ssl_core/data/clip_cache.py): each video decoded once at "
                                 "data.size into one memory-mapped uint8 file, clips sliced from it (the decoder's "
                                 "clips for the same seeds). auto: on when the estimate fits cache_budget_gb and the "
                                 "free disk; on: an error when it does not fit; off")
    cache_budget_gb: float = setting(4.0, "most bytes (1 GB = 1e9) the cache may take; it is read through the page "
                                          "cache, so keep it within RAM")
    cache_dir: str | None = setting(None, "where caches live, one folder per (videos, data.size) key, reused by later "
                                          "runs; null: <output.storage>/.clip_cache. Shared storage every node sees "
                                          "at the same path on a multi-node cluster")
    pseudo_labels: str | None = setting(None, "a pseudo-labeled set (Parquet: path, probs; from "
                                              "workflows.noisy_student or workflows.self_train): in training the "
                                              "unlabeled stream becomes these videos with their stored teacher "
                                              "probabilities (algorithms that learn stored targets: "
                                              "noisy_student_offline); in pretraining they join the labeled term "
                                              "under the teacher's top class (pretrain.labeled_weight > 0)")
    synthetic: SyntheticConfig = setting(doc="generate the synthetic action dataset into data.root when it is missing",
                                         factory=SyntheticConfig)

    def check(self) -> None:
        require(self.layout in LAYOUTS, "layout", f"must be one of {LAYOUTS}, got {self.layout!r}")
        given = [k for k in ("labeled_fraction", "labeled_per_class") if getattr(self, k) is not None]
        if self.labeled_split_file is None:
            require(len(given) == 1, "labeled_fraction",
                    "set exactly one of data.labeled_fraction / data.labeled_per_class (or labeled_split_file)")
        if self.labeled_fraction is not None:
            require(0 < self.labeled_fraction <= 1, "labeled_fraction",
                    f"must be in (0, 1], got {self.labeled_fraction}")
        if self.labeled_per_class is not None:
            require(self.labeled_per_class >= 1, "labeled_per_class", "must be >= 1")
        require(0 < self.test_fraction < 1, "test_fraction", "must be in (0, 1)")
        require(self.ucf_split in (1, 2, 3), "ucf_split", "must be 1, 2 or 3")
        for key in ("num_frames", "stride", "size", "eval_clips"):
            require(getattr(self, key) >= 1, key, "must be >= 1")
        require(self.decode_cpus > 0, "decode_cpus", "must be > 0")
        require(self.decoder in DECODERS, "decoder", f"must be one of {DECODERS}, got {self.decoder!r}")
        require(self.decode_timeout_s > 0, "decode_timeout_s", "must be > 0")
        require(self.max_decode_pixels is None or self.max_decode_pixels >= 1, "max_decode_pixels",
                f"must be >= 1 or null (no cap), got {self.max_decode_pixels}")
        require(self.cache in CACHE_MODES, "cache", f"must be one of {CACHE_MODES}, got {self.cache!r}")
        require(self.cache_budget_gb > 0, "cache_budget_gb", f"must be > 0, got {self.cache_budget_gb}")
        require(self.cache_dir is None or bool(str(self.cache_dir).strip()), "cache_dir",
                "must be a folder path or null (null: <output.storage>/.clip_cache)")
        if self.decoder == "torchcodec":
            # here: the chooser imports PyAV, which a config read on a torch-only machine (bench.gpu_step) lacks
            from ssl_core.data.decoders import torchcodec_unavailable

            why = torchcodec_unavailable()  # None, or the install hint (it starts with "data.decoder: ")
            require(why is None, "decoder", str(why).removeprefix("data.decoder: "))


@dataclass
class ModelConfig:
    primary: str = setting("small3d", "the trained model: a registered name (`vidssl list models`); a +tg suffix "
                                      "(small3d_w0.5+tg) reads the temporal-gradient view (frame differences); a "
                                      "zoo entry (vit_*, swin3d_t, ...: its `input` in the list) sets "
                                      "data.num_frames / stride / size and augment.crop_size where the config "
                                      "leaves them")
    auxiliary: str | None = setting(None, "the second model of algorithms with an auxiliary role (CMPL, "
                                          "FixMatch's companion); null: the primary's smaller sibling "
                                          "(ssl_core/auxiliary_pairing.py: r3d_50 -> r3d_50_w0.25, vit_b -> vit_s, "
                                          "small3d -> small3d_w0.5, ...; small3d_w0.5 for a primary without one), "
                                          "resolved when the config is read")
    teacher: str | None = setting(None, "frozen teacher of distill / noisy_student: a vidssl checkpoint directory, "
                                        "a run folder (its latest checkpoint) or an MLflow model URI "
                                        "(models:/name@alias, runs:/<id>/model)")
    dropout: float = setting(0.0, "noise on the trained models (Noisy Student): dropout before the classifier")
    stochastic_depth: float = setting(0.0, "noise on the trained models (Noisy Student): stochastic depth rate of "
                                           "the last residual block (residual models: r3d_*, mc3_18, r2plus1d_*, "
                                           "x3d_*, slow_r50, slowfast_r50, csn_r101, vit_*)")
    # From few labels a pretrained backbone (e.g. Kinetics-400) learns far more than a random one; nothing but a
    # named torchvision:... / hub:... source is downloaded at run time, and a classifier of another class count
    # starts fresh (ssl_core/models/init.py).
    init: str | None = setting(None, "pretrained weights for a fresh start of the primary (and MPL's teacher): a "
                                     "checkpoint directory or run folder (PATH#auxiliary takes another model of "
                                     "it), an MLflow model URI, a local state-dict file (.pt/.pth; VideoMAE's "
                                     "official or transformers' layout for vit_*; pytorchvideo's .pyth; "
                                     ".safetensors), torchvision:<model>:<weights>, hub:<model> (pytorchvideo's "
                                     "published weights, e.g. hub:x3d_m) or hf:<org>/<repo>[@<revision>] (a Hugging "
                                     "Face Hub repository, e.g. hf:MCG-NJU/videomae-base-finetuned-kinetics for "
                                     "vit_b; downloaded, needs internet); a resumed run restores its checkpoint "
                                     "instead")
    auxiliary_init: str | None = setting(None, "the same for CMPL's auxiliary (its architecture differs from the "
                                               "primary's); null: random init")
    # MLflow models logged by vidssl load without running code (safetensors + spec.json); older ones are pickles.
    trust_pickle: bool = setting(False, "load model.teacher / model.init / model.auxiliary_init MLflow models "
                                        "logged by an older vidssl in MLflow's pickled pytorch format (unpickling "
                                        "runs code stored in the artifact); false: such a model stops the run")

    def __post_init__(self) -> None:
        if self.auxiliary is None:  # resolved here, so the stored config and the logged params name the model
            self.auxiliary = paired_auxiliary(self.primary)

    def check(self) -> None:
        for key in ("primary", "auxiliary"):
            name = getattr(self, key)
            try:
                parse_model_name(name)
            except KeyError:
                require(False, key, f"unknown model {name!r}; choose from {[n for n, _ in list_models()]}")
            except ValueError as err:
                require(False, key, str(err))
        require(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        require(0 <= self.stochastic_depth < 1, "stochastic_depth", "must be in [0, 1)")
        for key in ("init", "auxiliary_init"):
            spec = getattr(self, key)
            why = None if spec is None else init_spec_problem(spec)
            require(why is None, key, str(why))


@dataclass
class TrainConfig:
    iterations: int = setting(600, "training length in iterations, not epochs (the small labeled stream repeats)")
    batch_size: int = setting(8, "labeled batch per worker")
    mu: int = setting(2, "unlabeled batch = mu x batch_size (FixMatch's ratio; 7 on images, smaller on CPU)")
    optimizer: str = setting("sgd", "sgd or adamw; LR = linear warm-up then cosine to 0")
    lr: float = setting(0.05, "peak learning rate")
    momentum: float = setting(0.9, "SGD momentum")
    weight_decay: float = setting(5e-4, "weight decay")
    # Fine-tuning a pretrained backbone (model.init): its early layers need small steps, a fresh head large ones.
    head_lr_scale: float = setting(1.0, "the classifier head's learning rate is lr x this (e.g. 10 with a "
                                        "pretrained backbone); 1: one lr for all")
    layer_decay: float = setting(1.0, "layer-wise lr decay d (BEiT / VideoMAE fine-tuning, 0.75 for ViT-B): depth "
                                      "i of L gets lr x d^(L - i), head at L, embeddings at 0; depth by block for "
                                      "vit_*, by stage for CNNs (ssl_core/param_groups.py); 1: off")
    decay_norm_and_bias: bool = setting(True, "weight decay on biases and normalisation weights too; false: none on "
                                              "them (VideoMAE / timm fine-tuning)")
    freeze_backbone_steps: int = setting(0, "linear probing, then fine-tuning (LP-FT): for the first N steps only "
                                            "the classifier head of each model loaded from model.init / "
                                            "model.auxiliary_init learns, its backbone keeps the loaded weights and "
                                            "normalisation statistics (ssl_core/frozen_backbone.py); >= iterations: "
                                            "a linear probe; 0: off")
    frozen_stages: int = setting(0, "the first N stages of each backbone loaded from model.init / "
                                    "model.auxiliary_init stay frozen for the whole run, weights and normalisation "
                                    "statistics (stage depths as train.layer_decay's: the stem is 0; "
                                    "ssl_core/frozen_backbone.py); 0: off")
    warmup_iters: int = setting(50, "linear LR warm-up steps")
    grad_clip: float = setting(5.0, "gradient-norm clip")
    log_every: int = setting(10, "steps between reports (MLflow + Ray Train)")
    eval_every: int = setting(200, "steps between evaluations")
    checkpoint_every: int = setting(200, "steps between checkpoints")
    keep_checkpoints: int = setting(2, "checkpoints kept")
    seed: int = setting(0, "random seed of the run (training workers, Optuna sweeps)")
    ema_decay: float = setting(0.0, "EMA of the trained weights (0: off); the EMA copies are evaluated, "
                                    "checkpointed, registered and deployed, and are the pseudo-label teachers with "
                                    "algorithm.ema_teacher")
    ema_start: int = setting(0, "optimizer step at which the EMA copies are made (e.g. the end of the supervised "
                                "warm-up)")
    precise_bn_batches: int = setting(0, "precise BatchNorm: recompute the evaluated models' BN statistics over the "
                                         "last N training batches before each evaluation; 0: off")
    # bench.gpu_step measures each lever on and off; compile stays off until measured on the target GPU.
    channels_last: bool = setting(False, "models and clips in the channels_last_3d memory format (cuDNN's NDHWC "
                                         "kernels); on CUDA the optimizer is always the fused one")
    compile: bool = setting(False, "torch.compile the trained models (in place: checkpoints keep their keys); its "
                                   "first steps take minutes")

    def check(self) -> None:
        require(self.iterations >= 1, "iterations", "must be >= 1")
        require(self.batch_size >= 1, "batch_size", "must be >= 1")
        require(self.mu >= 1, "mu", f"must be >= 1, got {self.mu}")
        require(self.optimizer in ("sgd", "adamw"), "optimizer", "must be sgd or adamw")
        require(self.lr > 0, "lr", "must be > 0")
        require(self.head_lr_scale > 0, "head_lr_scale", f"must be > 0, got {self.head_lr_scale}")
        require(0 < self.layer_decay <= 1, "layer_decay", f"must be in (0, 1] (1: off), got {self.layer_decay}")
        require(self.warmup_iters >= 0, "warmup_iters", "must be >= 0")
        require(self.freeze_backbone_steps >= 0, "freeze_backbone_steps", "must be >= 0")
        require(self.frozen_stages >= 0, "frozen_stages", "must be >= 0")
        require(0 <= self.ema_decay < 1, "ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        require(self.ema_start >= 0, "ema_start", "must be >= 0")
        require(self.precise_bn_batches >= 0, "precise_bn_batches", "must be >= 0")
        for key in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
            require(getattr(self, key) >= 1, key, "must be >= 1")


@dataclass
class ScalingConfig:
    num_workers: int = setting(1, "Ray Train workers (DDP)")
    use_gpu: bool = setting(False, "one GPU per worker (bf16 autocast)")
    cpus_per_worker: float = setting(1.0, "CPUs per worker; fractional leaves room for Ray Data's decode tasks (a "
                                          "2-core machine starves otherwise)")
    torch_threads: int = setting(1, "torch intra-op threads per worker")
    keep_freed_memory: bool = setting(True, "training processes keep freed memory for reuse (glibc malloc "
                                            "thresholds raised, ssl_core/allocator.py), so a step's big tensors are "
                                            "not page-faulted in afresh every step; false: the allocator's defaults")
    max_failures: int = setting(2, "worker-group restarts (from the latest checkpoint) after a training worker "
                                   "dies; -1: unlimited, 0: none")
    placement_strategy: str = setting("PACK", "how Ray places the training workers: PACK fills a node first; "
                                              "SPREAD uses different nodes where it can (a lost node takes fewer "
                                              "workers with it); STRICT_* fail instead of falling back")

    def check(self) -> None:
        require(self.num_workers >= 1, "num_workers", "must be >= 1")
        require(self.cpus_per_worker > 0, "cpus_per_worker", "must be > 0")
        require(self.torch_threads >= 1, "torch_threads", "must be >= 1")
        require(self.max_failures >= -1, "max_failures", "must be >= 0, or -1 for unlimited restarts")
        require(self.placement_strategy in PLACEMENT_STRATEGIES, "placement_strategy",
                f"must be one of {', '.join(PLACEMENT_STRATEGIES)}")


@dataclass
class TrackingConfig:
    uri: str | None = setting(None, "MLflow tracking URI; null: $MLFLOW_TRACKING_URI if set, else a SQLite file "
                                    "(mlflow.db) in the working directory")
    experiment: str = setting("vidssl", "MLflow experiment")
    registered_model: str | None = setting("vidssl-primary", "Model Registry name of the primary model (a new "
                                                             "version per run); null: logged, not registered")
    run_name: str | None = setting(None, "MLflow run name and the run's folder name; null: <algorithm>-<time stamp>")


@dataclass
class OutputConfig:
    storage: str = setting("runs", "Ray Train storage: <storage>/<run name>/ holds the run's checkpoints, "
                                   "labeled_split.csv and vidssl_run.json")


@dataclass
class AlgorithmConfig:
    name: str = setting("cmpl", "the method (`vidssl list algorithms`): supervised, pseudo_label, mean_teacher, "
                                "mixmatch, fixmatch, comatch, cmpl, svformer, meta_pseudo_labels, noisy_student, "
                                "distill, noisy_student_offline")
    params: dict[str, Any] = setting(doc="flat hyper-parameters, written algorithm.<param> (the form of --set and "
                                         "sweeps): any key a registered algorithm's Params declares; they apply to "
                                         "the chosen algorithm and win over its section", factory=dict)
    sections: dict[str, dict[str, Any]] = setting(doc="per-algorithm sections, written algorithm.<name>.<param> "
                                                      "(algorithm.fixmatch.lambda_u): each method's own values, so a "
                                                      "value meant for one never reaches another", factory=dict)

    def check(self) -> None:
        p = {**self.params, **self.values()}
        if "tau" in p:
            require(0 <= p["tau"] <= 1, "tau", f"must be in [0, 1], got {p['tau']}")
        for key, value in p.items():
            if key.startswith("lambda") and isinstance(value, float):
                require(value >= 0, key, "must be >= 0")
        try:
            self.resolved_params()
        except (TypeError, ValueError) as err:
            require(False, "", str(err))

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
    data: DataConfig = setting(doc="the videos: dataset, labeled split, clips, decoding", factory=DataConfig)
    augment: AugmentConfig = setting(doc="training views: weak (crop, flip) and strong (+ RandAugment, erasing)",
                                     factory=AugmentConfig)
    model: ModelConfig = setting(doc="the models and where their weights start", factory=ModelConfig)
    algorithm: AlgorithmConfig = setting(doc="the semi-supervised method and its hyper-parameters",
                                         factory=AlgorithmConfig)
    train: TrainConfig = setting(doc="optimisation, reporting, checkpoints", factory=TrainConfig)
    scaling: ScalingConfig = setting(doc="Ray Train workers and their resources", factory=ScalingConfig)
    tracking: TrackingConfig = setting(doc="MLflow", factory=TrackingConfig)
    output: OutputConfig = setting(doc="where runs are stored", factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """`section.key` -> value, for MLflow params and Tune search spaces."""
        return _flatten(self.to_dict())


def check_across_sections(cfg: Config) -> None:
    """The checks that need two sections (each section checks its own keys in its check())."""
    d, a = cfg.data, cfg.augment
    spec = model_inputs(cfg.model.primary)
    primary = cfg.model.primary
    # A crop taken from the primary's input spec surprises a config that set only data.size: say where it came from.
    origin = f" ({primary} takes {spec.crop} px where augment.crop_size is not set)" if spec is not None else ""
    _check(a.crop_size <= d.size, "augment.crop_size", f"must be <= data.size ({d.size}){origin}")
    if spec is not None:
        if spec.fixed:
            _check(d.num_frames == spec.frames, "data.num_frames", f"{primary} takes {spec.frames} frames only")
            _check(a.crop_size == spec.crop, "augment.crop_size", f"{primary} takes {spec.crop} px only")
        _check(d.num_frames >= spec.min_frames, "data.num_frames", f"{primary} needs >= {spec.min_frames} frames")
        _check(a.crop_size >= spec.min_side, "augment.crop_size", f"{primary} needs >= {spec.min_side} px")
        frames_multiple, side_multiple = spec.multiple
        _check(d.num_frames % frames_multiple == 0, "data.num_frames",
               f"{primary} needs a multiple of {frames_multiple}, got {d.num_frames}")
        _check(a.crop_size % side_multiple == 0, "augment.crop_size",
               f"{primary} needs a multiple of {side_multiple}, got {a.crop_size}")
    algorithm_cls = get_algorithm(cfg.algorithm.name)
    _check(algorithm_cls.needs_targets == (d.pseudo_labels is not None), "data.pseudo_labels",
           f"algorithm {cfg.algorithm.name} needs a pseudo-labeled set (a Parquet file from workflows.noisy_student)"
           if algorithm_cls.needs_targets else
           f"only algorithms that learn stored targets (noisy_student_offline) read it; {cfg.algorithm.name} would "
           "ignore it")
    _check(not algorithm_cls.frozen_roles or cfg.model.teacher is not None, "model.teacher",
           f"algorithm {cfg.algorithm.name} needs a teacher: a checkpoint directory or models:/<name>@<alias>")
    for key in ("freeze_backbone_steps", "frozen_stages"):
        _check(getattr(cfg.train, key) == 0 or cfg.model.init is not None or cfg.model.auxiliary_init is not None,
               f"train.{key}", "holds the backbones loaded from model.init / model.auxiliary_init, and neither is "
               "set: a freshly built backbone has no features to keep")


# --- loading -------------------------------------------------------------------------------------


def load_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML file (or the defaults when path is None), apply `key=value` overrides, validate."""
    return from_dict(read_with_overrides(path, overrides))


def with_overrides(raw: dict[str, Any], overrides: typing.Sequence[str]) -> Config:
    """A config from a resolved dict (e.g. a run's stored config) plus `key=value` overrides."""
    return from_dict(overridden(raw, overrides))


def overridden(raw: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """A copy of `raw` with each `key=value` override applied in order; `raw` itself is left as it was."""
    out = copy.deepcopy(raw)
    for item in overrides:
        apply_override(out, item)
    return out


def read_with_overrides(path: str | Path | None, overrides: typing.Sequence[str]) -> dict[str, Any]:
    """A config file's raw mapping (empty, for the defaults, when path is None) with `key=value` overrides."""
    return overridden(read_config_file(path) if path is not None else {}, overrides)


def pin_paths(raw: dict[str, Any], tracking_uri: str) -> dict[str, Any]:
    """A config dict (resolved, Config.to_dict(), or as written) with every path absolute and the tracking URI
    fixed: runs started later from another working directory (Tune actors, resumed workflows) see the same files.
    A path a written config leaves out is pinned at its default (data.root, output.storage)."""
    out = copy.deepcopy(raw)
    data = out["data"] = {"root": DataConfig.root, **(out.get("data") or {})}
    for key in ("root", "csv_path", "labeled_split_file", "pseudo_labels", "cache_dir"):
        if data.get(key):
            data[key] = str(Path(data[key]).expanduser().resolve())
    output = out["output"] = {"storage": OutputConfig.storage, **(out.get("output") or {})}
    output["storage"] = str(Path(output["storage"]).expanduser().resolve())
    model = out.get("model") or {}
    for key in ("init", "auxiliary_init"):  # a local source (`PATH#role` keeps its role); named sources stay
        if model.get(key) and not is_mlflow_uri(model[key]) and named_source(model[key]) is None:
            path, role = split_role(model[key])
            model[key] = str(Path(path).expanduser().resolve()) + (f"#{role}" if role else "")
    out["tracking"] = {**(out.get("tracking") or {}), "uri": tracking_uri}
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
    raw = with_model_input_defaults(raw)
    cfg: Config = build(Config, raw, "")
    # The algorithm section has its own reader: flat keys and per-algorithm sections are checked against the
    # registered algorithms' Params, not against AlgorithmConfig's fields.
    cfg.algorithm = checked(_build_algorithm(algo_raw), "algorithm")
    check_across_sections(cfg)
    return cfg


# Config key -> the InputSpec field that is its default for a primary model with published weights.
MODEL_INPUT_KEYS = {("data", "num_frames"): "frames", ("data", "stride"): "stride", ("data", "size"): "resize",
                    ("augment", "crop_size"): "crop"}


def with_model_input_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` with the clip settings the primary model's weights expect (`vidssl list models`: vit_b 16 frames at
    stride 4, 224 px) for each of data.num_frames / stride / size and augment.crop_size that it leaves unset.
    Entries without an input spec (small3d, r3d_*) keep the defaults of the config sections."""
    model = raw.get("model")
    primary = model.get("primary", ModelConfig.primary) if isinstance(model, dict) else ModelConfig.primary
    try:
        spec = model_inputs(primary) if isinstance(primary, str) else None
    except (KeyError, ValueError):  # ModelConfig.check names the key
        return raw
    if spec is None:
        return raw
    out = dict(raw)
    for (section, key), field_name in MODEL_INPUT_KEYS.items():
        given = out.get(section)
        if given is None or (isinstance(given, dict) and key not in given):
            out[section] = {**(given or {}), key: getattr(spec, field_name)}
    return out


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
    checked_params = {}
    for key, value in params.items():
        if key not in declared:
            raise ConfigError(f"algorithm.{key}: unknown key; known: {sorted(declared)} (or a section named "
                              f"after an algorithm: {sorted(known)})")
        checked_params[key] = coerce(value, declared[key], f"algorithm.{key}")
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
    return AlgorithmConfig(name=name, params=checked_params, sections=sections)


def _param_types(params_cls: type) -> dict[str, type]:
    hints = typing.get_type_hints(params_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(params_cls)}


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
