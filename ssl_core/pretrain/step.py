"""The pretraining network, one optimisation step, and its checkpoint: shared by the Ray Train worker
(workflows/runtime/pretrain_worker.py) and the Ray-free loop (ssl_core/pretrain/local.py).

    rho_moco / simclr: classifier (model.primary, e.g. small3d) with its last nn.Linear replaced by nn.Identity
      -> features (B, F) -> projection MLP -> embedding (B, proj_dim) -> objective (ssl_core/pretrain/objectives.py)
      -> [pretext head: Linear(F, 2) on the features, pretrain.pretext]
      [labeled clips -> features -> cosine classifier -> cross-entropy x pretrain.labeled_weight (S4L)]
    videomae: a ViT classifier, headless, encodes the visible tubes -> decoder -> masked tubes' pixels
      (ssl_core/pretrain/videomae.py)

Either way the checkpoint holds the full classifier (ssl_core/pretrain/backbone.py: its head untrained), so
model.init, workflows.evaluate and model_from_state read it like any vidssl checkpoint.

    python -m ssl_core.pretrain --config configs/pretrain_demo.yaml --set train.iterations=20
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssl_core.checkpoint import model_meta, save_training_state
from ssl_core.models import build_model
from ssl_core.models.init import InitReport, read_init_source
from ssl_core.models.registry import temporal_gradient
from ssl_core.pretrain.backbone import HeadAside
from ssl_core.pretrain.config import PretrainConfig, PretrainSetup
from ssl_core.pretrain.objectives import (
    KeyQueue,
    momentum_at,
    momentum_update,
    nt_xent,
    projection_mlp,
    rho_info_nce,
)
from ssl_core.pretrain.videomae import MaskedVideoNet, masked_reconstruction
from ssl_core.train_step import init_models
from ssl_core.unwrap import unwrap

STAGE = "pretrain"
COSINE_TEMPERATURE = 0.1


class Encoder(nn.Module):
    """backbone -> features; projection MLP -> embedding. The momentum encoder is a copy of this."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, video: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.backbone(video)
        return feats, self.projector(feats)


def grouped(encoder: nn.Module, video: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """encoder over `groups` consecutive chunks of the batch (each its own BatchNorm statistics), concatenated."""
    outs = [encoder(part) for part in video.chunk(max(1, min(groups, len(video))))]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


class PretrainNet(HeadAside):
    """The contrastive network (what DDP wraps): encoder (backbone + projector) and the optional pretext head."""

    def __init__(self, classifier: nn.Module, p: PretrainConfig) -> None:
        super().__init__(classifier)
        self.encoder = Encoder(classifier, projection_mlp(self.feature_dim, p.hidden_dim, p.proj_dim, p.proj_layers,
                                                             batch_norm=p.proj_bn))
        self.pretext_head = nn.Linear(self.feature_dim, 2) if p.pretext != "none" else None
        self.label_head = nn.Linear(self.feature_dim, self.num_classes, bias=False) if p.labeled_weight > 0 else None

    def forward(self, video: Tensor, groups: int = 1) -> tuple[Tensor, Tensor, Tensor | None]:
        """video (N, 3, T, h, w) -> features (N, F), embedding (N, proj_dim), pretext logits (N, 2) or None."""
        feats, z = grouped(self.encoder, video, groups)
        return feats, z, self.pretext_head(feats) if self.pretext_head is not None else None

    def classify(self, video: Tensor) -> Tensor:
        """video (N, 3, T, h, w) -> class logits (N, C) of the cosine classifier: cosine similarity / 0.1, as the
        k-NN monitor compares normalised features (a plain Linear on features of norm ~40 starts with huge
        logits whose gradients shake the backbone)."""
        assert self.label_head is not None
        feats = F.normalize(self.encoder.backbone(video).float(), dim=1)
        return feats @ F.normalize(self.label_head.weight.float(), dim=1).T / COSINE_TEMPERATURE

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def objective_state_dict(self) -> dict[str, Any]:
        return {"projector": self.encoder.projector.state_dict(),
                "pretext_head": self.pretext_head.state_dict() if self.pretext_head is not None else {},
                "label_head": self.label_head.state_dict() if self.label_head is not None else {}}

    def load_objective_state_dict(self, state: Mapping[str, Any]) -> None:
        self.encoder.projector.load_state_dict(state["projector"])
        for name in ("pretext_head", "label_head"):
            head = getattr(self, name)
            if head is not None and state.get(name):  # absent where the saving run had no such head
                head.load_state_dict(state[name])


def export_classifier(net: HeadAside, model_name: str, num_classes: int) -> nn.Module:
    """A fresh model.primary classifier holding the pretrained backbone (and the untrained head), on the CPU."""
    model = build_model(model_name, num_classes=num_classes)
    model.load_state_dict(net.classifier_state_dict())
    return model.eval()


def build_net(
    setup: PretrainSetup, classes: Sequence[str], sources: Mapping[str, str] | None = None, *, init: bool = True,
) -> tuple[HeadAside, list[InitReport]]:
    """The network for model.primary with len(classes) outputs (the head is never trained), started from
    model.init when set and `init` (a fresh start; `sources`: a local file replacing an MLflow URI, see
    ssl_core.train_step.init_models)."""
    cfg = setup.base
    classifier = build_model(cfg.model.primary, num_classes=len(classes))
    reports = init_models(cfg, {"primary": classifier}, classes, sources) if cfg.model.init and init else []
    if setup.pretrain.objective == "videomae":
        net = MaskedVideoNet(classifier, setup.pretrain, frames=cfg.data.num_frames, crop=cfg.augment.crop_size)
        return net, reports
    return PretrainNet(classifier, setup.pretrain), reports


def init_objective_state(setup: PretrainSetup, sources: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """The objective state of model.init when it names a pretraining checkpoint (else None): what
    Pretrainer.continue_objective takes on a fresh start. `sources` as build_net's."""
    spec = (sources or {}).get("init", setup.base.model.init)
    return read_init_source(spec).objective_state if spec else None


class Pretrainer:
    """The objective around the (possibly DDP-wrapped) network of build_net: momentum encoder and queue for
    rho_moco."""

    def __init__(self, net: nn.Module, p: PretrainConfig, *, iterations: int, queue_size: int, seed: int = 0) -> None:
        self.net = net
        self.p = p
        self.iterations = iterations
        core = self.core
        device = next(core.parameters()).device
        self.key_encoder: nn.Module | None = None
        self.queue: KeyQueue | None = None
        self.momentum = p.momentum
        if p.objective == "rho_moco":
            assert isinstance(core, PretrainNet)
            self.key_encoder = copy.deepcopy(core.encoder).to(device).train()
            for param in self.key_encoder.parameters():
                param.requires_grad_(False)
            generator = torch.Generator().manual_seed(seed)  # the same initial queue on every worker
            self.queue = KeyQueue(queue_size, p.proj_dim, generator=generator).to(device)

    @property
    def core(self) -> HeadAside:
        return unwrap(self.net)  # type: ignore[return-value]

    def loss(self, views: Tensor | None, pretext: Tensor | None, step: int,
             labeled: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor | float]]:
        """views (B, rho, 3, T, h, w) normalised, None when pretrain.objective_weight is 0; pretext (B, rho) int64
        labels (pretrain.pretext) or None; labeled: the labeled videos' views (L, rho, 3, T, h, w) and labels (L,)
        when pretrain.labeled_weight > 0."""
        p = self.p
        if views is None:
            if labeled is None:
                raise ValueError("a step without the objective's views needs the labeled videos'")
            label_loss, metrics = self.label_loss(*labeled)
            loss = p.labeled_weight * label_loss
            metrics["loss/total"] = loss.detach()
            return loss, metrics
        if p.objective == "videomae":  # every clip masked and reconstructed on its own: no positives
            return masked_reconstruction(self.net, views.flatten(0, 1), p.mask_ratio, p.norm_target)
        b, rho = views.shape[:2]
        if p.residual_clips:
            rgb = rho - p.residual_clips
            residual = temporal_gradient(views[:, rgb:].flatten(0, 1)).view_as(views[:, rgb:])
            views = torch.cat([views[:, :rgb], residual], dim=1)
        clips = views.transpose(0, 1).flatten(0, 1)  # clip-major: rows i*B .. i*B + B-1 are every video's clip i
        groups = p.bn_splits if self.key_encoder is not None else 1
        feats, z, logits = self.net(clips, groups=groups)
        z = F.normalize(z.float(), dim=1)
        metrics: dict[str, Tensor | float] = {}
        if self.key_encoder is not None and self.queue is not None:
            m = momentum_at(step, self.iterations, p.momentum, p.momentum_anneal)
            with torch.no_grad():
                momentum_update(self.core.encoder, self.key_encoder, m)  # type: ignore[arg-type]
                # Shuffled BN: the keys are computed in groups of another order than the queries'.
                order = torch.randperm(len(clips), device=clips.device)
                _, k_shuffled = grouped(self.key_encoder, clips[order], groups)
                k = torch.empty_like(k_shuffled)
                k[order] = k_shuffled
                k = F.normalize(k.float(), dim=1)
            contrastive, metrics = rho_info_nce(z.view(rho, b, -1), k.view(rho, b, -1), self.queue.negatives(),
                                                p.temperature)
            self.queue.enqueue_gathered(k.view(rho, b, -1)[0])  # one key per video: its first clip's
            metrics["pretrain/momentum"] = m
        else:
            contrastive, metrics = nt_xent(z.view(rho, b, -1), p.temperature)
        loss = p.objective_weight * contrastive
        metrics["loss/contrastive"] = contrastive.detach()
        if logits is not None and pretext is not None:
            target = pretext.transpose(0, 1).flatten().to(logits.device)
            pretext_loss = F.cross_entropy(logits.float(), target)
            loss = loss + p.pretext_weight * pretext_loss
            metrics["loss/pretext"] = pretext_loss.detach()
            metrics["pretext/accuracy"] = (logits.argmax(dim=1) == target).float().mean()
        if labeled is not None and p.labeled_weight > 0:
            label_loss, label_metrics = self.label_loss(*labeled)
            loss = loss + p.labeled_weight * label_loss
            metrics.update(label_metrics)
        # Spread of the embeddings over the batch, x sqrt(dim): ~1 when spread over the sphere, 0 when collapsed.
        metrics["pretrain/embedding_std"] = z.detach().std(dim=0).mean() * math.sqrt(z.shape[1])
        metrics["pretrain/feature_norm"] = feats.detach().float().norm(dim=1).mean()
        metrics["loss/total"] = loss.detach()
        return loss, metrics

    def label_loss(self, views: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor | float]]:
        """Cross-entropy of the cosine classifier over the RGB clips of labeled videos (residual clips hold no
        appearance): views (L, rho, 3, T, h, w), labels (L,)."""
        rgb = views.shape[1] - self.p.residual_clips
        logits = self.core.classify(views[:, :rgb].flatten(0, 1))  # type: ignore[operator]
        target = labels.to(logits.device).repeat_interleave(rgb)
        loss = F.cross_entropy(logits, target)
        return loss, {"loss/labeled": loss.detach(), "labeled/accuracy": (logits.argmax(1) == target).float().mean()}

    def continue_objective(self, state: Mapping[str, Any]) -> list[str]:
        """A fresh run started (model.init) from another pretraining of this objective takes its projector (when of
        the same shape), momentum encoder and queue (when of the same size) too: a new projector would first have to
        catch up with the backbone, and its gradients meanwhile shake the features. Returns what was taken."""
        core = self.core
        if state.get("objective") != self.p.objective or not isinstance(core, PretrainNet):
            return []
        mine = core.objective_state_dict()
        same = {name: part for name, part in state.items() if name in mine and _same_shapes(part, mine[name])}
        if "projector" not in same:
            return []
        core.load_objective_state_dict({name: same.get(name, {}) for name in mine})
        taken = ["projector"]
        if self.key_encoder is not None and _same_shapes(state.get("key_encoder", {}), self.key_encoder.state_dict()):
            self.key_encoder.load_state_dict(state["key_encoder"])
            taken.append("momentum encoder")
        if self.queue is not None and _same_shapes(state.get("queue", {}), self.queue.state_dict()):
            self.queue.load_state_dict(state["queue"])
            taken.append("queue")
        return taken

    def state_dict(self) -> dict[str, Any]:
        """Everything but the backbone (saved as the classifier): the projector and pretext head, or the decoder
        (the network's objective_state_dict), the key encoder, the queue."""
        return {
            "objective": self.p.objective,
            **self.core.objective_state_dict(),
            "key_encoder": self.key_encoder.state_dict() if self.key_encoder is not None else {},
            "queue": self.queue.state_dict() if self.queue is not None else {},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("objective", self.p.objective) != self.p.objective:
            raise ValueError(f"the checkpoint was pretrained with {state['objective']}, not {self.p.objective}")
        self.core.load_objective_state_dict(state)
        if self.key_encoder is not None:
            self.key_encoder.load_state_dict(state["key_encoder"])
        if self.queue is not None:
            queue = state["queue"]
            if queue["keys"].shape != self.queue.keys.shape:
                raise ValueError(f"the checkpoint's queue is {tuple(queue['keys'].shape)}, this run's "
                                 f"{tuple(self.queue.keys.shape)} (pretrain.queue_size / proj_dim changed)")
            self.queue.load_state_dict(queue)


def _same_shapes(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Two state dicts with the same keys and tensor shapes (a head the saving run lacked is empty: not the same)."""
    return bool(a) and a.keys() == b.keys() and all(getattr(a[k], "shape", None) == getattr(b[k], "shape", None)
                                                    for k in a)


def pretrain_optimize(
    trainer: Pretrainer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    views: Tensor | None,
    pretext: Tensor | None,
    *,
    grad_clip: float,
    labeled: tuple[Tensor, Tensor] | None = None,
) -> dict[str, Tensor]:
    """loss -> backward -> clip -> step -> LR (the momentum encoder moved inside the loss, MoCo's order);
    returns the step's scalar metrics as detached 0-d tensors on the device, so nothing here waits for the
    device (ssl_core.metrics.WindowMeans brings them over once per window). The step count is the scheduler's
    (checkpointed, so it resumes)."""
    step = scheduler.last_epoch
    device = views.device if views is not None else labeled[0].device if labeled is not None else None
    if device is None:
        raise ValueError("a step needs the objective's views or the labeled videos'")
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    with autocast:
        loss, metrics = trainer.loss(views, pretext, step, labeled)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(list(trainer.net.parameters()), grad_clip)
    optimizer.step()
    scheduler.step()
    out = {k: v.detach() if isinstance(v, Tensor) else torch.tensor(float(v), device=device)
           for k, v in metrics.items()}
    out["grad_norm"] = grad_norm.detach()
    return out


def pretrain_meta(setup: PretrainSetup, classes: Sequence[str], head_name: str) -> dict[str, Any]:
    """model_meta plus what marks a self-supervised backbone: its classifier (`untrained_head`) was never trained."""
    return {**model_meta(setup.base, classes), "stage": STAGE, "objective": setup.pretrain.objective,
            "untrained_head": head_name}


def save_pretrain_checkpoint(
    directory: str | Path,
    *,
    setup: PretrainSetup,
    trainer: Pretrainer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    classes: Sequence[str],
) -> Path:
    """An ssl_core.checkpoint directory: models {"primary": the full classifier}, model_names, num_classes, the
    objective's state (algorithm), optimizer, scheduler, step, RNG, meta (pretrain_meta)."""
    core = trainer.core
    name = setup.base.model.primary
    return save_training_state(
        directory, models={"primary": export_classifier(core, name, len(classes))}, optimizer=optimizer,
        scheduler=scheduler, step=step, algorithm_state=trainer.state_dict(), model_names={"primary": name},
        num_classes=len(classes), meta=pretrain_meta(setup, classes, core.head_name),
    )


def restore_pretrain_state(
    state: Mapping[str, Any],
    *,
    trainer: Pretrainer,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> int:
    """Load a pretraining checkpoint (load_training_state) into the objects; returns the step to continue from."""
    if (state.get("meta") or {}).get("stage") != STAGE:
        raise ValueError("not a pretraining checkpoint (its meta has no stage=pretrain)")
    trainer.core.load_classifier_state_dict(state["models"]["primary"])
    trainer.load_state_dict(state["algorithm"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])
