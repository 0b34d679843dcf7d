"""The `pretrain:` config section and the pretraining run's whole config (the training sections + `pretrain`).

A pretraining file has the training file's sections (data, augment, model, train, scaling, tracking, output;
ssl_core/config.py) except `algorithm`, plus `pretrain:`. The training sections keep their meaning where they
apply: `model.primary` is the backbone, `train.batch_size` counts VIDEOS per worker and step (each yields
`pretrain.rho` clips), `train.iterations` / `lr` / `optimizer` / `log_every` / `checkpoint_every` as in
training, the labeled split (`data.labeled_fraction`, ...) is the k-NN monitor's memory bank and, with
`pretrain.labeled_weight` > 0, what the classifier beside the objective learns (semi-supervised pretraining).

    python -c "from ssl_core.pretrain.config import load_pretrain_config; \
print(load_pretrain_config('configs/pretrain_demo.yaml', ['pretrain.rho=4']).pretrain)"
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssl_core.config import Config, from_dict, overridden, read_config_file, read_with_overrides
from ssl_core.data.splits import SPLIT_FILE
from ssl_core.models.registry import TG_SUFFIX, parse_model_name
from ssl_core.models.vit import PATCH
from ssl_core.models.vit import SIZES as VIT_SIZES
from ssl_core.typed_config import ConfigError, build, require, setting

OBJECTIVES = ("rho_moco", "simclr", "videomae")
PRETEXTS = ("none", "speed", "arrow")
# Training keys a pretraining run never reads: not logged as its MLflow params (see PretrainSetup.params).
UNUSED_KEYS = (
    "algorithm.", "model.auxiliary", "model.auxiliary_init", "model.teacher", "model.dropout",
    "model.stochastic_depth", "train.mu", "train.eval_every", "train.ema_decay", "train.ema_start",
    "train.precise_bn_batches", "augment.min_scale", "augment.randaugment_ops", "augment.randaugment_magnitude",
    "augment.erasing_p",
)
# The queue's ceiling when pretrain.queue_size is null (MoCo's 65,536 is for Kinetics-size sets).
AUTO_QUEUE_CAP = 4096
# Crop area fractions when pretrain.min_scale / max_scale are null. Contrastive: rho-MoCo's. videomae: VideoMAE's
# multi-scale crop takes sides of 1 to 0.66 of the short side (areas 0.44 to 1), no more: the clip is the target.
CONTRASTIVE_SCALE = (0.2, 0.77)
VIDEOMAE_SCALE = (0.44, 1.0)
# Decoder attention heads of this width when pretrain.decoder_heads is null (VideoMAE: 384 / 6, 192 / 3).
DECODER_HEAD_DIM = 64


@dataclass
class PretrainConfig:
    objective: str = setting("rho_moco", "rho_moco: momentum encoder + queue of negative keys, InfoNCE (rho-MoCo, "
                                         "Feichtenhofer et al. 2021); simclr: one encoder, the other clips of the "
                                         "batch are the negatives (cheaper, needs larger batches); videomae: "
                                         "reconstruct the pixels of masked tubes from the visible ones (VideoMAE, "
                                         "Tong et al. 2022; ViT backbones only)")
    # rho 4 beat rho 2 by 3-4 points on Kinetics; each clip is one more forward pass.
    rho: int = setting(2, "clips per video; clips of the same video at independent random times are positives, "
                          "which rewards features that persist over time (motion) rather than a frame's texture; "
                          "videomae has no positives: each clip is a sample of its own (1 is enough)")
    # A video's own key from its previous visit must have left the queue by the time it comes back, or it is its
    # own negative: each pass over the data enqueues one key per video.
    queue_size: int | None = setting(None, "negative keys kept (rho_moco); null: min(4096, half the train videos)")
    temperature: float = setting(0.1, "InfoNCE temperature (0.1 in rho-MoCo; 0.2 in MoCo v2)")
    momentum: float = setting(0.99, "momentum encoder: theta_k <- m theta_k + (1 - m) theta_q; 0.99 suits short "
                                    "runs (the key encoder must follow a fast-changing query encoder)")
    momentum_anneal: bool = setting(False, "cosine anneal of m from `momentum` to 1 over train.iterations (BYOL / "
                                           "rho-MoCo): keys change less and less")
    hidden_dim: int = setting(512, "projection MLP on the backbone features (the features are what is kept): "
                                   "hidden width")
    proj_dim: int = setting(128, "projection MLP output width")
    proj_layers: int = setting(3, "projection MLP Linear layers (rho-MoCo: 3; MoCo v2: 2)")
    # Without it the embeddings of small3d start collapsed (ssl_core/pretrain/objectives.py).
    proj_bn: bool = setting(True, "BatchNorm after each hidden projection layer (SimCLR v2 / rho-MoCo)")
    # BN over the same clips leaks "same batch" and the loss drops without learning.
    bn_splits: int = setting(2, "MoCo's shuffling BN on one device: the query batch runs through the backbone in "
                                "this many groups, the key batch in as many groups of a shuffled order; 1: off")
    # The videos' per-video constants (colour, background, drift) would otherwise match two clips of a video alone.
    min_scale: float | None = setting(None, "per-clip augmentation: smallest crop area fraction; null: 0.2 for "
                                            "rho_moco / simclr (rho-MoCo), 0.44 for videomae (VideoMAE's "
                                            "multi-scale crop)")
    max_scale: float | None = setting(None, "per-clip augmentation: largest crop area fraction; null: 0.77 for "
                                            "rho_moco / simclr (rho-MoCo: 0.766), 1 for videomae")
    # videomae reconstructs the clip's own colours: the colour augmentation below is never applied to it.
    color_jitter: float = setting(0.6, "colour jitter strength for brightness / contrast / saturation "
                                       "(rho_moco / simclr)")
    hue: float = setting(0.15, "colour jitter strength for hue")
    jitter_p: float = setting(0.8, "probability of a clip's colour jitter")
    grayscale_p: float = setting(0.2, "probability of a grayscale clip")
    residual_clips: int = setting(0, "residual-frame positives (IIC): the last N of a video's rho clips are shown "
                                     "as temporal gradients (frame differences), so matching them needs what moves; "
                                     "0: every clip RGB; at most rho - 1")
    background_swap: float = setting(0.0, "background swap (FAME, ssl_core/pretrain/augment.py): probability that a "
                                          "clip keeps only its moving foreground, pasted on another video's still "
                                          "frame")
    foreground_ratio: float = setting(0.15, "fraction of a swapped clip's pixels taken as foreground")
    knn_every: int = setting(100, "k-NN monitor every N steps (0: only at the end): frozen, L2-normalised backbone "
                                  "features, labeled split as memory bank, test split as queries")
    knn_k: int = setting(20, "neighbours in the k-NN vote (InstDisc, DINO: 20-200)")
    knn_temperature: float = setting(0.07, "k-NN vote weights exp(sim / T)")
    probe_steps: int = setting(200, "logistic-regression probe at the end on the same frozen features (labeled split "
                                    "-> test): full-batch LBFGS iterations; 0: off")
    probe_weight_decay: float = setting(1e-4, "the probe's L2 weight decay")
    pretext: str = setting("none", "an extra pretext task on the same forward passes: speed (each clip at "
                                   "data.stride or 2x, predict which), arrow (forwards or reversed in time), none")
    pretext_weight: float = setting(0.5, "weight of the pretext head's cross-entropy")
    # S4L (Zhai et al. 2019): the labels train the backbone on the objective's strong views, beside the objective on
    # every video; a cosine classifier, as the k-NN monitor compares normalised features.
    labeled_weight: float = setting(0.0, "semi-supervised pretraining: weight of a cosine classifier's cross-entropy "
                                         "on the labeled split's clips (the objective's views, RGB clips only) beside "
                                         "the objective on every train video; 0: labels reach no loss")
    labeled_batch: int = setting(16, "labeled videos per step when labeled_weight > 0 (drawn again each pass)")
    pseudo_batch: int = setting(16, "with data.pseudo_labels: videos of that pseudo-labeled set per step, beside "
                                    "labeled_batch videos of the labeled split (its own stream, so the few true labels "
                                    "keep their share of each step)")
    objective_weight: float = setting(1.0, "weight of the contrastive objective (rho_moco / simclr); 0 with "
                                           "labeled_weight > 0: supervised training on the labeled clips alone, on the "
                                           "same views, and no train video decoded for the objective (the stage of "
                                           "workflows.self_train)")
    next_config: str = setting("configs/demo.yaml", "the config run next on this pretraining (model.init = its run "
                                                    "folder), named in the command both runners print at the end: a "
                                                    "training config, or a pretraining config for a further stage")
    # 90 % in VideoMAE (75 % for images, MAE): neighbouring frames repeat each other, so little is left to see.
    mask_ratio: float = setting(0.9, "videomae: fraction of each clip's spatial patch positions masked, the same "
                                     "positions in every frame (tube masking): int(ratio x patches per frame)")
    # MAE's norm_pix_loss: standardised tubes weigh texture and edges over flat colour; where most of a frame is
    # smooth, standardising blows its noise up into targets nothing can predict.
    norm_target: bool = setting(True, "videomae: reconstruct each masked tube standardised per channel (VideoMAE's "
                                      "default); false: the clip's pixels as the model sees them")
    # VideoMAE: 4 blocks; each block runs on all the clip's tubes, while the encoder sees a tenth of them.
    decoder_depth: int = setting(4, "videomae: decoder transformer blocks (dropped after pretraining)")
    decoder_dim: int | None = setting(None, "videomae: decoder width; null: half the encoder's (VideoMAE: 384 for "
                                            "ViT-B, 192 for ViT-S)")
    decoder_heads: int | None = setting(None, f"videomae: decoder attention heads; null: decoder width / "
                                              f"{DECODER_HEAD_DIM}, at least 1")

    def check(self) -> None:
        require(self.objective in OBJECTIVES, "objective", f"must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective == "videomae":
            require(self.rho >= 1, "rho", f"must be >= 1, got {self.rho}")
            for key, off in (("pretext", "none"), ("residual_clips", 0), ("background_swap", 0)):
                require(getattr(self, key) == off, key,
                        f"videomae reconstructs each clip's own pixels: must be {off!r}, got {getattr(self, key)!r}")
        else:
            require(self.rho >= 2, "rho", f"must be >= 2 (positives are other clips of the same video), got "
                                          f"{self.rho}")
        require(0 <= self.residual_clips < self.rho, "residual_clips",
                f"must be in [0, pretrain.rho - 1 = {self.rho - 1}] (one clip per video stays RGB), got "
                f"{self.residual_clips}")
        require(self.queue_size is None or self.queue_size >= 1, "queue_size", "must be >= 1, or null (automatic)")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        for key in ("hidden_dim", "proj_dim", "proj_layers", "bn_splits", "knn_k"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        low, high = self.crop_scale()
        require(0 < low <= high <= 1, "min_scale",
                f"need 0 < pretrain.min_scale <= pretrain.max_scale <= 1, got {low} and {high}")
        require(self.color_jitter >= 0, "color_jitter", f"must be >= 0, got {self.color_jitter}")
        require(0 <= self.hue <= 0.5, "hue", f"must be in [0, 0.5], got {self.hue}")
        for key in ("jitter_p", "grayscale_p", "background_swap"):
            require(0 <= getattr(self, key) <= 1, key, f"must be in [0, 1], got {getattr(self, key)}")
        require(0 < self.foreground_ratio <= 1, "foreground_ratio", f"must be in (0, 1], got {self.foreground_ratio}")
        require(self.knn_every >= 0, "knn_every", "must be >= 0 (0: k-NN at the end only)")
        require(self.knn_temperature > 0, "knn_temperature", f"must be > 0, got {self.knn_temperature}")
        require(self.probe_steps >= 0, "probe_steps", "must be >= 0 (0: no linear probe)")
        require(self.probe_weight_decay >= 0, "probe_weight_decay", "must be >= 0")
        require(self.pretext in PRETEXTS, "pretext", f"must be one of {PRETEXTS}, got {self.pretext!r}")
        require(self.pretext_weight >= 0, "pretext_weight", "must be >= 0")
        require(self.labeled_weight >= 0, "labeled_weight", f"must be >= 0, got {self.labeled_weight}")
        require(self.labeled_batch >= 1, "labeled_batch", f"must be >= 1, got {self.labeled_batch}")
        require(self.pseudo_batch >= 1, "pseudo_batch", f"must be >= 1, got {self.pseudo_batch}")
        require(self.objective_weight >= 0, "objective_weight", f"must be >= 0, got {self.objective_weight}")
        require(self.objective_weight > 0 or self.labeled_weight > 0, "objective_weight",
                "0 leaves nothing to learn unless pretrain.labeled_weight > 0")
        require(self.objective_weight == 1 or self.objective != "videomae", "objective_weight",
                "weighs the contrastive objectives (rho_moco, simclr); videomae's reconstruction stands alone")
        require(self.labeled_weight == 0 or self.objective != "videomae", "labeled_weight",
                "the classifier beside the objective reads the contrastive objectives' features: rho_moco or simclr")
        require(0 < self.mask_ratio < 1, "mask_ratio", f"must be in (0, 1), got {self.mask_ratio}")
        require(self.decoder_depth >= 1, "decoder_depth", f"must be >= 1, got {self.decoder_depth}")
        for key in ("decoder_dim", "decoder_heads"):
            value = getattr(self, key)
            require(value is None or value >= 1, key, f"must be >= 1, or null (automatic), got {value}")

    def crop_scale(self) -> tuple[float, float]:
        """(min_scale, max_scale) of the crop area, the objective's defaults where null."""
        low, high = VIDEOMAE_SCALE if self.objective == "videomae" else CONTRASTIVE_SCALE
        return (low if self.min_scale is None else self.min_scale, high if self.max_scale is None else self.max_scale)


def decoder_shape(p: PretrainConfig, encoder_dim: int) -> tuple[int, int]:
    """(width, heads) of the videomae decoder on an encoder of `encoder_dim` channels."""
    dim = p.decoder_dim if p.decoder_dim is not None else max(1, encoder_dim // 2)
    heads = p.decoder_heads if p.decoder_heads is not None else max(1, dim // DECODER_HEAD_DIM)
    return dim, heads


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
        flat["pretrain.min_scale"], flat["pretrain.max_scale"] = self.pretrain.crop_scale()
        return flat

    def queue_size(self, num_train_videos: int) -> int:
        """pretrain.queue_size, or its automatic value for this many train videos."""
        if self.pretrain.queue_size is not None:
            return self.pretrain.queue_size
        return max(1, min(AUTO_QUEUE_CAP, num_train_videos // 2))


def next_command(setup: PretrainSetup, run_dir: str | Path) -> str:
    """The command to run next on a finished pretraining's run folder (pretrain.next_config): self-training when
    that config has a `self_train` section, a further pretraining stage when it has a `pretrain` one, else
    fine-tuning. After semi-supervised pretraining it names
    the run's labeled split, so what follows learns from the same labeled videos only."""
    following = setup.pretrain.next_config
    sections = _sections(following)
    runner = ("workflows.self_train" if "self_train" in sections else "workflows.pretrain" if "pretrain" in sections
              else "workflows.train")
    # A fine-tuning config's own model.primary may differ: the backbone's is the one its weights fit.
    primary = f" --set model.primary={setup.base.model.primary}" if runner == "workflows.train" else ""
    command = f".venv/bin/python -m {runner} --config {following}{primary} --set model.init={run_dir}"
    if setup.pretrain.labeled_weight > 0:
        command += f" --set data.labeled_split_file={Path(run_dir) / SPLIT_FILE}"
    return command


def _sections(path: str) -> set[str]:
    try:
        return set(read_config_file(path))
    except (OSError, ConfigError):  # not readable from here: the command names it as given
        return set()


def load_pretrain_config(path: str | Path | None, overrides: typing.Sequence[str] = ()) -> PretrainSetup:
    """A pretraining YAML file (or the defaults) plus `key=value` overrides, validated."""
    return pretrain_from_dict(read_with_overrides(path, overrides))


def pretrain_with_overrides(raw: dict[str, Any], overrides: typing.Sequence[str]) -> PretrainSetup:
    """A stored config (PretrainSetup.to_dict()) plus overrides, e.g. more iterations for a resumed run."""
    return pretrain_from_dict(overridden(raw, overrides))


def pretrain_from_dict(raw: dict[str, Any]) -> PretrainSetup:
    raw = dict(raw)
    # A self-training file is a stage config plus the rounds around it: workflows.self_train reads that section.
    raw.pop("self_train", None)
    if raw.get("algorithm") is not None:
        raise ConfigError("algorithm: a pretraining config has no algorithm section; pretrain.objective chooses "
                          f"the objective ({' | '.join(OBJECTIVES)})")
    section = build(PretrainConfig, raw.pop("pretrain", None) or {}, "pretrain")
    # The supervised algorithm: the base config validates without asking for anything an SSL method needs. A
    # pseudo-labeled set is the labeled term's here, not an algorithm's: checked in check_across_sections.
    data = raw.get("data")
    pseudo_labels = data.get("pseudo_labels") if isinstance(data, dict) else None
    if pseudo_labels is not None:
        raw["data"] = {k: v for k, v in data.items() if k != "pseudo_labels"}
    base = from_dict({**raw, "algorithm": {"name": "supervised"}})
    base.data.pseudo_labels = pseudo_labels
    setup = PretrainSetup(base, section)
    check_across_sections(setup)
    return setup


def _check(ok: bool, path: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{path}: {message}")


def check_across_sections(setup: PretrainSetup) -> None:
    """The checks between `pretrain` and the training sections (each section checks its own keys)."""
    p, cfg = setup.pretrain, setup.base
    clips = cfg.train.batch_size * p.rho
    if p.objective == "videomae":
        check_videomae(setup)
    else:  # a ViT has no BatchNorm to split
        _check(clips >= p.bn_splits, "pretrain.bn_splits",
               f"{p.bn_splits} groups need at least as many clips per step (train.batch_size x pretrain.rho = "
               f"{clips})")
    if p.objective == "simclr":
        _check(cfg.train.batch_size >= 2, "train.batch_size",
               "simclr takes its negatives from the other videos of the batch: needs >= 2 videos per step")
    _check(cfg.model.auxiliary_init is None, "model.auxiliary_init",
           "pretraining trains one backbone (model.primary); model.init may start it from weights")
    # Fine-tuning controls: the pretraining network's last Linear is the projector's, not a classifier, and its
    # backbone learns from the start, so neither a head lr nor a decay by depth means anything here.
    for key in ("head_lr_scale", "layer_decay"):
        _check(getattr(cfg.train, key) == 1.0, f"train.{key}",
               "a fine-tuning control (a pretrained backbone under a classifier head); pretraining takes 1")
    _check(cfg.data.pseudo_labels is None or p.labeled_weight > 0, "data.pseudo_labels",
           "a pseudo-labeled set joins the labeled term: needs pretrain.labeled_weight > 0 (the objective reads every "
           "train video anyway)")


def check_videomae(setup: PretrainSetup) -> None:
    """videomae needs a ViT (tubes to mask) and a mask that leaves some of every frame visible and hides some."""
    p, cfg = setup.pretrain, setup.base
    primary = cfg.model.primary
    base, _ = parse_model_name(primary)
    _check(base in VIT_SIZES and not primary.endswith(TG_SUFFIX), "model.primary",
           f"pretrain.objective videomae masks the tubes of a ViT: one of {', '.join(VIT_SIZES)}, got {primary}")
    patches = (cfg.augment.crop_size // PATCH) ** 2
    masked = int(p.mask_ratio * patches)  # ssl_core.pretrain.videomae.masked_per_frame
    _check(0 < masked < patches, "pretrain.mask_ratio",
           f"{p.mask_ratio} of the {patches} patches per frame of a {cfg.augment.crop_size} px crop masks {masked}: "
           "at least one must be masked and one visible")
    dim, heads = decoder_shape(p, VIT_SIZES[base].dim)
    _check(dim % heads == 0, "pretrain.decoder_heads", f"{heads} heads must divide the decoder width {dim}")
