"""The `pretrain:` config section and the pretraining run's whole config (the training sections + `pretrain`).

A pretraining file has the training file's sections (data, augment, model, train, scaling, tracking, output;
ssl_core/config.py) except `algorithm`, plus `pretrain:`. The training sections keep their meaning where they
apply: `model.primary` is the backbone, `train.batch_size` counts VIDEOS per worker and step (each yields
`pretrain.rho` clips), `train.iterations` / `lr` / `optimizer` / `log_every` / `checkpoint_every` as in
training, the labeled split (`data.labeled_fraction`, ...) is the k-NN monitor's memory bank and nothing else.

    python -c "from ssl_core.pretrain.config import load_pretrain_config; \
print(load_pretrain_config('configs/pretrain_demo.yaml', ['pretrain.rho=4']).pretrain)"
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssl_core.config import Config, from_dict
from ssl_core.typed_config import ConfigError, apply_override, build, read_config_file

OBJECTIVES = ("rho_moco", "simclr")
PRETEXTS = ("none", "speed", "arrow")
# Training keys a pretraining run never reads: not logged as its MLflow params (see PretrainSetup.params).
UNUSED_KEYS = (
    "algorithm.", "model.auxiliary", "model.auxiliary_init", "model.teacher", "model.dropout",
    "model.stochastic_depth", "train.mu", "train.eval_every", "train.ema_decay", "train.ema_start",
    "train.precise_bn_batches", "augment.min_scale", "augment.randaugment_ops", "augment.randaugment_magnitude",
    "augment.erasing_p", "data.pseudo_labels", "data.labeled_split_file",
)
# The queue's ceiling when pretrain.queue_size is null (MoCo's 65,536 is for Kinetics-size sets).
AUTO_QUEUE_CAP = 4096


@dataclass
class PretrainConfig:
    # rho_moco: momentum encoder + queue of negative keys, InfoNCE (rho-MoCo, Feichtenhofer et al. 2021);
    # simclr: one encoder, the other clips of the batch are the negatives (cheaper, needs larger batches).
    objective: str = "rho_moco"
    # Clips per video; clips of the SAME video at independent random times are positives, which rewards
    # features that persist over time (motion) rather than a frame's texture. rho 4 beat rho 2 by 3-4 points
    # on Kinetics; each clip is one more forward pass.
    rho: int = 2
    # Negative keys kept (rho_moco). null: min(4096, half the train videos), because each pass over the data
    # enqueues one key per video, and a video's own key from its previous visit must have left the queue by the
    # time it comes back, or it is its own negative.
    queue_size: int | None = None
    # InfoNCE temperature (0.1 in rho-MoCo; 0.2 in MoCo v2).
    temperature: float = 0.1
    # Momentum encoder: theta_k <- m theta_k + (1 - m) theta_q. 0.99 suits short runs (the key encoder must
    # follow a fast-changing query encoder); rho-MoCo's long runs use 0.994 annealed to 1 (momentum_anneal).
    momentum: float = 0.99
    # Cosine anneal of m from `momentum` to 1 over train.iterations (BYOL / rho-MoCo): keys change less and less.
    momentum_anneal: bool = False
    # Projection MLP on the backbone features (the features themselves are what is kept): hidden width, output
    # width, number of Linear layers (rho-MoCo: 3; MoCo v2: 2), BatchNorm after each hidden layer (proj_bn, as
    # SimCLR v2 / rho-MoCo: without it the embeddings of small3d start collapsed, ssl_core/pretrain/objectives.py).
    hidden_dim: int = 512
    proj_dim: int = 128
    proj_layers: int = 3
    proj_bn: bool = True
    # MoCo's shuffling BN on one device: the query batch is run through the backbone in this many groups and the
    # key batch in as many groups of a shuffled order, so the BN statistics a query and its positive key see
    # differ (BN over the same clips leaks "same batch" and the loss drops without learning). 1: off.
    bn_splits: int = 2
    # Appearance augmentation drawn independently per clip (one set per clip, applied to all its frames): the
    # videos' per-video constants (colour, background, drift) would otherwise match two clips of a video alone
    # (METHODS.md, "shortcuts"). Crop area fraction [min_scale, max_scale] (rho-MoCo: 0.2-0.766), colour jitter
    # strength for brightness / contrast / saturation and hue (0.6 / 0.15) applied with jitter_p, grayscale_p.
    min_scale: float = 0.2
    max_scale: float = 0.77
    color_jitter: float = 0.6
    hue: float = 0.15
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    # Residual-frame positives (IIC, Tao et al. 2020): the last `residual_clips` of a video's rho clips are shown as
    # temporal gradients (frame differences, model `+tg`'s view) to the same backbone. A scene's static look is
    # absent from them, so matching an RGB clip to its video's residual clip needs what moves: the per-video
    # background stops being a shortcut. 0: every clip RGB; at most rho - 1 (the backbone's own RGB view stays).
    residual_clips: int = 0
    # Background swap (FAME, ssl_core/pretrain/augment.py): the probability that a clip keeps only its moving
    # foreground, pasted on another video's still frame, and the fraction of its pixels taken as foreground.
    background_swap: float = 0.0
    foreground_ratio: float = 0.15
    # k-NN monitor (labels never reach a loss): every knn_every steps (0: only at the end), frozen, L2-normalised
    # backbone features of the labeled split are the memory bank, the test split the queries; weighted vote of
    # the knn_k nearest with weights exp(sim / knn_temperature) (InstDisc, DINO: k 20-200, T 0.07).
    knn_every: int = 100
    knn_k: int = 20
    knn_temperature: float = 0.07
    # Logistic-regression probe at the end on the same frozen features (labeled split -> test): full-batch LBFGS
    # iterations (0: off) and its L2 weight decay.
    probe_steps: int = 200
    probe_weight_decay: float = 1e-4
    # An extra pretext task on the same forward passes: speed (each clip at data.stride or 2x data.stride,
    # predict which: SpeedNet / PRP) or arrow (each clip forwards or reversed in time: arrow of time); a linear
    # head on the backbone features, cross-entropy weighted by pretext_weight. none: off.
    pretext: str = "none"
    pretext_weight: float = 0.5


@dataclass
class PretrainSetup:
    """A pretraining run's config: the training sections (`base`; its `algorithm` unused) and `pretrain`."""

    base: Config
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def to_dict(self) -> dict[str, Any]:
        """The stored form (vidssl_run.json, config.yaml): every section but `algorithm`, then `pretrain`."""
        out = self.base.to_dict()
        out.pop("algorithm", None)
        out["pretrain"] = dataclasses.asdict(self.pretrain)
        return out

    def params(self) -> dict[str, Any]:
        """`section.key` -> value of every key pretraining reads (MLflow params)."""
        flat = {k: v for k, v in self.base.flat().items() if not k.startswith(UNUSED_KEYS)}
        flat.update({f"pretrain.{k}": v for k, v in dataclasses.asdict(self.pretrain).items()})
        return flat

    def queue_size(self, num_train_videos: int) -> int:
        """pretrain.queue_size, or its automatic value for this many train videos."""
        if self.pretrain.queue_size is not None:
            return self.pretrain.queue_size
        return max(1, min(AUTO_QUEUE_CAP, num_train_videos // 2))


def load_pretrain_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> PretrainSetup:
    """A pretraining YAML file (or the defaults) plus `key=value` overrides, validated."""
    raw = read_config_file(path) if path is not None else {}
    for item in overrides:
        apply_override(raw, item)
    return pretrain_from_dict(raw)


def pretrain_with_overrides(raw: dict[str, Any], overrides: typing.Sequence[str]) -> PretrainSetup:
    """A stored config (PretrainSetup.to_dict()) plus overrides, e.g. more iterations for a resumed run."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        apply_override(raw, item)
    return pretrain_from_dict(raw)


def pretrain_from_dict(raw: dict[str, Any]) -> PretrainSetup:
    raw = dict(raw)
    if raw.get("algorithm") is not None:
        raise ConfigError("algorithm: a pretraining config has no algorithm section; pretrain.objective chooses "
                          f"the objective ({' | '.join(OBJECTIVES)})")
    section = build(PretrainConfig, raw.pop("pretrain", None) or {}, "pretrain")
    # The supervised algorithm: the base config validates without asking for anything an SSL method needs.
    base = from_dict({**raw, "algorithm": {"name": "supervised"}})
    setup = PretrainSetup(base, section)
    validate_pretrain(setup)
    return setup


def _check(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{path}: {message}")


def validate_pretrain(setup: PretrainSetup) -> None:
    p, cfg = setup.pretrain, setup.base
    _check(p.objective in OBJECTIVES, "pretrain.objective", f"must be one of {OBJECTIVES}, got {p.objective!r}")
    _check(p.rho >= 2, "pretrain.rho", f"must be >= 2 (positives are other clips of the same video), got {p.rho}")
    _check(0 <= p.residual_clips < p.rho, "pretrain.residual_clips",
           f"must be in [0, pretrain.rho - 1 = {p.rho - 1}] (one clip per video stays RGB), got {p.residual_clips}")
    _check(p.queue_size is None or p.queue_size >= 1, "pretrain.queue_size", "must be >= 1, or null (automatic)")
    _check(p.temperature > 0, "pretrain.temperature", f"must be > 0, got {p.temperature}")
    _check(0 <= p.momentum < 1, "pretrain.momentum", f"must be in [0, 1), got {p.momentum}")
    for key in ("hidden_dim", "proj_dim", "proj_layers", "bn_splits", "knn_k"):
        _check(getattr(p, key) >= 1, f"pretrain.{key}", f"must be >= 1, got {getattr(p, key)}")
    _check(0 < p.min_scale <= p.max_scale <= 1, "pretrain.min_scale",
           f"need 0 < pretrain.min_scale <= pretrain.max_scale <= 1, got {p.min_scale} and {p.max_scale}")
    _check(p.color_jitter >= 0, "pretrain.color_jitter", f"must be >= 0, got {p.color_jitter}")
    _check(0 <= p.hue <= 0.5, "pretrain.hue", f"must be in [0, 0.5], got {p.hue}")
    for key in ("jitter_p", "grayscale_p", "background_swap"):
        _check(0 <= getattr(p, key) <= 1, f"pretrain.{key}", f"must be in [0, 1], got {getattr(p, key)}")
    _check(0 < p.foreground_ratio <= 1, "pretrain.foreground_ratio", f"must be in (0, 1], got {p.foreground_ratio}")
    _check(p.knn_every >= 0, "pretrain.knn_every", "must be >= 0 (0: k-NN at the end only)")
    _check(p.knn_temperature > 0, "pretrain.knn_temperature", f"must be > 0, got {p.knn_temperature}")
    _check(p.probe_steps >= 0, "pretrain.probe_steps", "must be >= 0 (0: no linear probe)")
    _check(p.probe_weight_decay >= 0, "pretrain.probe_weight_decay", "must be >= 0")
    _check(p.pretext in PRETEXTS, "pretrain.pretext", f"must be one of {PRETEXTS}, got {p.pretext!r}")
    _check(p.pretext_weight >= 0, "pretrain.pretext_weight", "must be >= 0")
    clips = cfg.train.batch_size * p.rho
    _check(clips >= p.bn_splits, "pretrain.bn_splits",
           f"{p.bn_splits} groups need at least as many clips per step (train.batch_size x pretrain.rho = {clips})")
    if p.objective == "simclr":
        _check(cfg.train.batch_size >= 2, "train.batch_size",
               "simclr takes its negatives from the other videos of the batch: needs >= 2 videos per step")
    _check(cfg.model.auxiliary_init is None, "model.auxiliary_init",
           "pretraining trains one backbone (model.primary); model.init may start it from weights")
    _check(cfg.data.pseudo_labels is None, "data.pseudo_labels", "pretraining reads every train video, no stored set")
