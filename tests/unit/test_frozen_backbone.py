"""train.freeze_backbone_steps (LP-FT): the head alone learns for the first steps, then the whole model.

    python -m pytest tests/unit/test_frozen_backbone.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from ssl_core.algorithms import get_algorithm
from ssl_core.config import ConfigError, load_config
from ssl_core.frozen_backbone import BackboneFreeze
from ssl_core.models import build_model
from ssl_core.schedule import build_scheduler
from ssl_core.train_step import build_optimizer, held_backbones, optimize

CFG = load_config(None, ["train.warmup_iters=0", "train.iterations=10", "train.optimizer=adamw",
                         "train.freeze_backbone_steps=3", "model.init=pretrained/backbone.pt"])


def batch(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {"video": torch.randn(4, 3, 4, 16, 16, generator=g), "label": torch.tensor([0, 1, 2, 1])}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(before[k], v)}


@pytest.mark.parametrize("name", ["small3d_w0.25", "frame2d_w0.25"])
def test_only_the_head_learns_until_the_freeze_ends(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=3)
    optimizer = build_optimizer(CFG, {"primary": model})
    scheduler = build_scheduler(optimizer, warmup=0, total=10)
    algorithm = get_algorithm("supervised")({"primary": model}, get_algorithm("supervised").Params())
    held = held_backbones(CFG, algorithm)
    assert isinstance(held, BackboneFreeze) and held.norms  # both models normalise: their statistics are held too
    model.train()
    start = snapshot(model)
    for step in range(3):
        optimize(algorithm, optimizer, scheduler, batch(step), None, grad_clip=5.0, held=held)
        # autograd recorded nothing through the backbone: the backward pass reached the head alone
        assert not any(p.requires_grad for p in held.parameters) and all(p.grad is None for p in held.parameters)
    assert changed(start, model) == {"fc.weight", "fc.bias"}  # running statistics and the backbone as loaded
    optimize(algorithm, optimizer, scheduler, batch(3), None, grad_clip=5.0, held=held)
    moved = changed(start, model)
    assert any(k.endswith("running_mean") for k in moved) and len(moved) > 4
    assert all(norm.training for norm in held.norms) and all(p.requires_grad for p in held.parameters)


def test_a_ddp_model_keeps_its_gradients_registered(tmp_path: Path) -> None:
    """Under DistributedDataParallel the backbone still requires gradients (its reducer registered them at
    wrapping time); they are computed and dropped, and the backbone stays as loaded."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(build_model("frame2d_w0.25", num_classes=3))
        optimizer = build_optimizer(CFG, {"primary": model})
        scheduler = build_scheduler(optimizer, warmup=0, total=10)
        algorithm = get_algorithm("supervised")({"primary": model}, get_algorithm("supervised").Params())
        held = held_backbones(CFG, algorithm)
        assert held is not None and not held.toggle
        model.train()
        start = snapshot(model.module)
        for step in range(3):
            optimize(algorithm, optimizer, scheduler, batch(step), None, grad_clip=5.0, held=held)
            assert all(p.requires_grad for p in held.parameters) and all(p.grad is None for p in held.parameters)
        assert changed(start, model.module) == {"fc.weight", "fc.bias"}
        optimize(algorithm, optimizer, scheduler, batch(3), None, grad_clip=5.0, held=held)
        assert len(changed(start, model.module)) > 4
    finally:
        dist.destroy_process_group()


def test_only_models_that_load_weights_are_held() -> None:
    """CMPL with a pretrained primary and a fresh auxiliary: the auxiliary trains from the first step."""
    cmpl = get_algorithm("cmpl")
    models = {"primary": build_model("frame2d_w0.25", num_classes=3), "auxiliary": build_model("small3d_w0.25",
                                                                                              num_classes=3)}
    held = held_backbones(CFG, cmpl(models, cmpl.Params()))
    assert held is not None
    primary = {id(p) for p in models["primary"].parameters()}
    assert held.parameters and all(id(p) in primary for p in held.parameters)


def test_off_by_default_and_checked() -> None:
    off = load_config(None, ["model.init=pretrained/backbone.pt"])
    supervised = get_algorithm("supervised")
    assert held_backbones(off, supervised({"primary": build_model("small3d_w0.25", num_classes=3)},
                                          supervised.Params())) is None
    with pytest.raises(ConfigError, match="train.freeze_backbone_steps"):
        load_config(None, ["train.freeze_backbone_steps=-1"])
    with pytest.raises(ConfigError, match="train.freeze_backbone_steps: holds the backbones loaded from model.init"):
        load_config(None, ["train.freeze_backbone_steps=10"])


def test_frozen_stages_hold_the_early_stages_for_the_whole_run() -> None:
    """frame2d's depths: 0-3 the per-frame convolutions, 4 the temporal block, 5 the head. With frozen_stages=4
    and no frozen steps, the temporal block and the head learn from the first step, the convolutions never."""
    cfg = load_config(None, ["train.warmup_iters=0", "train.iterations=10", "train.optimizer=adamw",
                             "train.frozen_stages=4", "model.init=pretrained/backbone.pt"])
    torch.manual_seed(0)
    model = build_model("frame2d_w0.25", num_classes=3)
    optimizer = build_optimizer(cfg, {"primary": model})
    scheduler = build_scheduler(optimizer, warmup=0, total=10)
    algorithm = get_algorithm("supervised")({"primary": model}, get_algorithm("supervised").Params())
    held = held_backbones(cfg, algorithm)
    assert held is not None
    model.train()
    start = snapshot(model)
    for step in range(4):
        optimize(algorithm, optimizer, scheduler, batch(step), None, grad_clip=5.0, held=held)
    moved = changed(start, model)
    assert moved and all(k.startswith(("temporal.", "fc.")) for k in moved)
    assert {"temporal.0.weight", "temporal.1.running_mean", "fc.weight"} <= moved
    assert not any(p.requires_grad for p in held.parameters)
    with pytest.raises(ConfigError, match="train.frozen_stages: holds the backbones loaded from model.init"):
        load_config(None, ["train.frozen_stages=2"])
