"""One optimisation step in plain view, shared by the Ray Train worker and the Ray-free runner (ssl_core.loop):
the models and optimizer of a run, its batches in the algorithm contract, and `optimize` (ssl_step -> backward
-> clip -> step -> EMA -> LR). No PyAV here: bench.gpu_step runs it on GPU machines without it.

    python -m ssl_core.loop --config configs/demo.yaml --set train.iterations=20     # the Ray-free runner over it
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ssl_core.algorithms import get_algorithm
from ssl_core.algorithms.base import Algorithm, StepOutput
from ssl_core.config import Config
from ssl_core.data.batched_augment import unlabeled_views, weak_view
from ssl_core.data.transforms import AugmentConfig
from ssl_core.frozen_backbone import BackboneFreeze
from ssl_core.models import build_model
from ssl_core.models.init import InitReport, InitSource, load_init, read_init_source
from ssl_core.models.stochastic_depth import add_stochastic_depth
from ssl_core.param_groups import param_groups
from ssl_core.step import TRUE_LABEL_KEY, ssl_step
from ssl_core.unwrap import unwrap


def model_names(cfg: Config) -> dict[str, str]:
    """Role -> registered model name for the roles the configured algorithm trains (a frozen teacher is
    loaded, not built). MPL's teacher shares the primary's architecture."""
    algorithm_cls = get_algorithm(cfg.algorithm.name)
    names = {"primary": cfg.model.primary, "auxiliary": cfg.model.auxiliary, "teacher": cfg.model.primary}
    roles = algorithm_cls.roles_for(cfg.algorithm.resolved_params())
    return {role: names[role] for role in roles if role not in algorithm_cls.frozen_roles}


def build_models(cfg: Config, num_classes: int) -> dict[str, nn.Module]:
    """The trainable models of the configured algorithm, with the configured noise (dropout, stochastic depth)."""
    models = {}
    for role, name in model_names(cfg).items():
        model = build_model(name, num_classes=num_classes, dropout=cfg.model.dropout)
        if cfg.model.stochastic_depth > 0:
            model = add_stochastic_depth(model, cfg.model.stochastic_depth)
        models[role] = model
    return models


# Config key (model.<key>) whose pretrained weights start each trainable role. MPL's teacher is built with the
# primary's architecture and starts from the same weights: the student learns the unlabeled clips only from the
# teacher's pseudo-labels, so a random teacher beside a pretrained student would first teach it noise.
INIT_KEYS = {"primary": "init", "teacher": "init", "auxiliary": "auxiliary_init"}


def init_models(
    cfg: Config,
    models: Mapping[str, nn.Module],
    classes: Sequence[str] | None = None,
    sources: Mapping[str, str] | None = None,
) -> list[InitReport]:
    """Load `model.init` / `model.auxiliary_init` into freshly built models in place (see INIT_KEYS); one report
    per loaded model, for the console (`report.line()`) and MLflow. Call it on a fresh start only: a resumed run
    restores its checkpoint instead. `classes`: this run's, so a source naming others keeps a fresh classifier.
    `sources`: config key -> local source replacing the configured one (workflows.train resolves an MLflow
    URI into a file once, on the driver). Raises InitError (a ConfigError) for weights of another architecture."""
    reports: list[InitReport] = []
    read: dict[str, InitSource] = {}
    for role, model in models.items():
        key = INIT_KEYS.get(role)
        if key is None:
            continue
        spec = sources[key] if sources is not None and key in sources else getattr(cfg.model, key)
        if spec is None:
            continue
        if key not in read:
            read[key] = read_init_source(spec, key=f"model.{key}")
        src = read[key]
        reports.append(load_init(unwrap(model), src.state_dict, name=role, source=src.description,
                                 key=f"model.{key}", source_classes=src.classes, classes=classes))
    return reports


def held_backbones(cfg: Config, algorithm: Algorithm) -> BackboneFreeze | None:
    """train.freeze_backbone_steps and train.frozen_stages over the trained models that start from pretrained
    weights (INIT_KEYS: the primary from model.init, CMPL's auxiliary from model.auxiliary_init); a model built
    fresh trains whole from step 0."""
    started = {role: m for role, m in algorithm.trainable_models().items()
               if role in INIT_KEYS and getattr(cfg.model, INIT_KEYS[role]) is not None}
    t = cfg.train
    held = started and (t.freeze_backbone_steps > 0 or t.frozen_stages > 0)
    return BackboneFreeze(started, t.freeze_backbone_steps, frozen_stages=t.frozen_stages) if held else None


def freeze(model: nn.Module) -> nn.Module:
    """A teacher that is only ever called under no_grad: eval mode, no parameter gradients."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def build_optimizer(cfg: Config, models: Mapping[str, nn.Module]) -> torch.optim.Optimizer:
    """SGD or AdamW over every trained model; the fused (one kernel per step) form when the models are on CUDA,
    so place them first (place_models). train.head_lr_scale / layer_decay / decay_norm_and_bias split the
    parameters into groups (ssl_core.param_groups); with their defaults there is one group, as before."""
    t = cfg.train
    groups = param_groups(models, lr=t.lr, weight_decay=t.weight_decay, head_lr_scale=t.head_lr_scale,
                          layer_decay=t.layer_decay, decay_norm_and_bias=t.decay_norm_and_bias)
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_cuda for p in params)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, nesterov=True,
                               fused=fused or None)
    return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay, fused=fused or None)


def input_memory_format(cfg: Config) -> torch.memory_format:
    """The memory format of model inputs (B, 3, T, h, w): channels_last_3d with train.channels_last."""
    return torch.channels_last_3d if cfg.train.channels_last else torch.contiguous_format


def place_models(models: Mapping[str, nn.Module], cfg: Config, device: torch.device) -> dict[str, nn.Module]:
    """The models on `device`, in the configured memory format, compiled in place with train.compile."""
    if device.type == "cuda":
        # Clip shapes are fixed for a run: let cuDNN time its algorithms once and keep the fastest.
        torch.backends.cudnn.benchmark = True
    placed = {}
    for role, model in models.items():
        model = model.to(device, memory_format=input_memory_format(cfg))
        if cfg.train.compile:
            model.compile()
        placed[role] = model
    return placed


def make_batches(
    labeled_clips: Tensor,  # (B_l, T, H, W, 3) uint8
    labels: Tensor,  # (B_l,) int64
    unlabeled_clips: Tensor | None,  # (B_u, T, H, W, 3) uint8
    true_labels: Tensor | None,  # (B_u,) int64, metrics only
    aug: AugmentConfig,
    device: torch.device,
    targets: Tensor | None = None,  # (B_u, C) stored teacher probabilities (data.pseudo_labels)
    memory_format: torch.memory_format = torch.contiguous_format,  # of the views (input_memory_format)
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """Augmented, normalised batches in the algorithm contract (the unlabeled clip yields weak + strong).

    The uint8 clips move to `device` first and are augmented there: a quarter of the bytes of float views
    cross the bus, and a GPU does the augmentation work (one batched kernel per op, ssl_core.data.batched_augment)."""
    video = weak_view(labeled_clips.to(device), aug).contiguous(memory_format=memory_format)
    labeled = {"video": video, "label": labels.to(device)}
    if unlabeled_clips is None:
        return labeled, None
    weak, strong = (v.contiguous(memory_format=memory_format) for v in unlabeled_views(unlabeled_clips.to(device), aug))
    unlabeled = {"weak": weak, "strong": strong}
    if true_labels is not None:
        unlabeled[TRUE_LABEL_KEY] = true_labels.to(device)
    if targets is not None:
        unlabeled["target"] = targets.float().to(device)
    return labeled, unlabeled


def stream_batches(
    lb: Mapping[str, Tensor],  # {"clip", "label"} or, augmented on the data workers, {"video", "label"}
    ub: Mapping[str, Tensor] | None,  # {"clip" | "weak", "strong", "true_label"[, "target"]}
    aug: AugmentConfig,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,  # of the views (input_memory_format)
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """Batches from the Ray Data streams in the algorithm contract: uint8 clips are augmented here (on the
    training device); views the data workers already made (augment.placement = data) only move."""
    if "clip" in lb:
        return make_batches(
            lb["clip"], lb["label"], None if ub is None else ub["clip"], None if ub is None else ub["true_label"],
            aug, device, targets=None if ub is None else ub.get("target"), memory_format=memory_format,
        )

    def view(v: Tensor) -> Tensor:
        return v.to(device).contiguous(memory_format=memory_format)

    labeled = {"video": view(lb["video"]), "label": lb["label"].to(device)}
    if ub is None:
        return labeled, None
    unlabeled = {"weak": view(ub["weak"]), "strong": view(ub["strong"]), TRUE_LABEL_KEY: ub["true_label"].to(device)}
    if "target" in ub:
        unlabeled["target"] = ub["target"].float().to(device)
    return labeled, unlabeled


def optimize(
    algorithm: Algorithm,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    labeled: dict[str, Tensor],
    unlabeled: dict[str, Tensor] | None,
    *,
    grad_clip: float,
    held: BackboneFreeze | None = None,
) -> tuple[StepOutput, dict[str, Tensor]]:
    """ssl_step -> backward -> clip -> step -> EMA -> LR (with `held`, train.freeze_backbone_steps, the
    backbones sit out the first steps: ssl_core.frozen_backbone); returns the step output and its scalar metrics as
    detached 0-d tensors on the device: nothing here waits for the device (ssl_core.metrics.WindowMeans
    brings them over once per logging window)."""
    algorithm.steps_done = scheduler.last_epoch  # steps done so far (the scheduler is checkpointed, so this resumes)
    if held is not None:
        held.hold(algorithm.steps_done)
    device_type = labeled["video"].device.type
    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device_type == "cuda" else contextlib.nullcontext()
    )
    with autocast:
        out = ssl_step(algorithm, labeled, unlabeled)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    if held is not None:
        held.drop_gradients()
    params = [p for m in algorithm.trainable_models().values() for p in m.parameters()]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    algorithm.after_optimizer_step()
    algorithm.update_ema()
    scheduler.step()
    metrics = {"loss/total": out.loss.detach(), "grad_norm": grad_norm.detach()}
    metrics.update({k: v.detach() for k, v in out.metrics.items()})
    return out, metrics
