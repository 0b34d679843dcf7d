"""Fine-tuning controls of the one optimizer builder: head lr scale, layer-wise lr decay by block / stage, no weight
decay on norms and biases, the schedule over several groups, and resuming them.

    .venv/bin/python -m pytest -q tests/unit/test_finetune_lr.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from ssl_core.algorithms import get_algorithm
from ssl_core.checkpoint import CheckpointError, load_training_state, restore_training_state, save_training_state
from ssl_core.config import ConfigError, load_config
from ssl_core.models import build_model
from ssl_core.param_groups import base_lr, layer_depths
from ssl_core.pretrain.config import load_pretrain_config
from ssl_core.schedule import build_scheduler, warmup_cosine
from ssl_core.train_step import build_optimizer, optimize

LR = 0.1
# small3d's and frame2d's features: (Conv3d, BatchNorm3d, ReLU) x 4, one depth per conv layer
CONV_LAYERS = {f"features.{3 * i + j}.": i for i in range(4) for j in (0, 1)}


def lr_of(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, float]:
    """Parameter name -> its group's lr."""
    by_id = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    return {name: by_id[id(p)] for name, p in model.named_parameters()}


def test_defaults_give_the_one_group_a_plain_optimizer_has() -> None:
    """Default keys: the optimizer (and so its checkpoint) is the one every run had before the keys existed."""
    for optimizer_name, plain in (
        ("sgd", lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)),
        ("adamw", lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=5e-4)),
    ):
        cfg = load_config(None, [f"train.optimizer={optimizer_name}"])
        models = {"primary": build_model("small3d_w0.25", num_classes=3),
                  "auxiliary": build_model("small3d_w0.25", num_classes=3)}
        ours = build_optimizer(cfg, models)
        theirs = plain([p for m in models.values() for p in m.parameters()])
        assert ours.state_dict() == theirs.state_dict()
        assert base_lr(ours) == 0.05


def test_vit_layer_decay_by_block_and_head_scale() -> None:
    """vit_tiny (4 blocks, L = 5): patch_embed lr d^5, blocks.k d^(4 - k), fc_norm + head lr x scale (VideoMAE)."""
    cfg = load_config(None, [f"train.lr={LR}", "train.layer_decay=0.5", "train.head_lr_scale=10",
                             "model.primary=vit_tiny"])
    model = build_model("vit_tiny", num_classes=3)
    lrs = lr_of(build_optimizer(cfg, {"primary": model}), model)
    for name, lr in lrs.items():
        if name.startswith("patch_embed."):
            expected = LR * 0.5**5
        elif name.startswith("blocks."):
            expected = LR * 0.5 ** (4 - int(name.split(".")[1]))
        else:
            assert name.startswith(("fc_norm.", "head.")), name
            expected = LR * 10
        assert lr == pytest.approx(expected), name


@pytest.mark.parametrize(("name", "stages"), [
    # torchvision's VideoResNet: stem, layer1..4, fc
    ("r3d_18_w0.25", {"stem.": 0, "layer1.": 1, "layer2.": 2, "layer3.": 3, "layer4.": 4, "fc.": 5}),
    # pytorchvideo's blocks.N (blocks.0 the stem, blocks.5 the head)
    ("r3d_50_w0.25", {f"blocks.{i}.": i for i in range(6)}),
    # one conv layer (conv + BatchNorm) per depth
    ("small3d_w0.5", {**CONV_LAYERS, "fc.": 4}),
    ("frame2d_w0.5", {**CONV_LAYERS, "temporal.": 4, "fc.": 5}),
])
def test_cnn_depths_are_stages(name: str, stages: dict[str, int]) -> None:
    depths, last = layer_depths(build_model(name, num_classes=3, dropout=0.1))
    assert last == max(stages.values())
    for param, depth in depths.items():
        prefix = next(p for p in stages if param.startswith(p))
        assert depth == stages[prefix], param


def test_cnn_lrs_and_every_model_of_a_run_get_their_own_depths() -> None:
    cfg = load_config(None, [f"train.lr={LR}", "train.layer_decay=0.5", "train.head_lr_scale=4",
                             "model.primary=r3d_18_w0.25", "model.auxiliary=small3d_w0.25"])
    primary, auxiliary = build_model("r3d_18_w0.25", num_classes=3), build_model("small3d_w0.25", num_classes=3)
    optimizer = build_optimizer(cfg, {"primary": primary, "auxiliary": auxiliary})
    p, a = lr_of(optimizer, primary), lr_of(optimizer, auxiliary)
    assert p["stem.0.weight"] == pytest.approx(LR * 0.5**5)
    assert p["layer3.1.conv2.0.weight"] == pytest.approx(LR * 0.5**2)
    assert p["fc.weight"] == p["fc.bias"] == pytest.approx(LR * 4)
    assert a["features.0.weight"] == pytest.approx(LR * 0.5**4) and a["fc.weight"] == pytest.approx(LR * 4)
    assert len({id(q) for g in optimizer.param_groups for q in g["params"]}) == len(p) + len(a)


def test_head_scale_alone_splits_head_from_backbone() -> None:
    cfg = load_config(None, [f"train.lr={LR}", "train.head_lr_scale=10"])
    model = build_model("small3d_w0.25", num_classes=3)
    lrs = lr_of(build_optimizer(cfg, {"primary": model}), model)
    assert {n: lr for n, lr in lrs.items() if lr != pytest.approx(LR)} == {"fc.weight": pytest.approx(1.0),
                                                                           "fc.bias": pytest.approx(1.0)}


def test_no_weight_decay_on_norms_and_biases_when_asked() -> None:
    cfg = load_config(None, ["train.decay_norm_and_bias=false", "train.weight_decay=0.01"])
    model = build_model("vit_tiny", num_classes=3)
    optimizer = build_optimizer(cfg, {"primary": model})
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        # biases, LayerNorm weights and VideoMAE's q_bias / v_bias: none; matrices and kernels: 0.01
        assert decay[id(p)] == (0.0 if p.ndim == 1 else 0.01), name
    assert {g["lr"] for g in optimizer.param_groups} == {cfg.train.lr}


def test_the_schedule_scales_every_group_and_keeps_their_ratios() -> None:
    cfg = load_config(None, [f"train.lr={LR}", "train.layer_decay=0.75", "train.head_lr_scale=10"])
    optimizer = build_optimizer(cfg, {"primary": build_model("small3d_w0.25", num_classes=3)})
    initial = [g["lr"] for g in optimizer.param_groups]
    assert len(set(initial)) == len(initial) == 5
    scheduler = build_scheduler(optimizer, warmup=3, total=10)
    for step in range(10):
        factor = warmup_cosine(step, warmup=3, total=10)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([lr * factor for lr in initial])
        assert base_lr(optimizer) == pytest.approx(LR * factor)  # the `lr` runs report: train.lr's schedule
        optimizer.step()
        scheduler.step()


def make_run(cfg_overrides: list[str], seed: int) -> tuple:
    cfg = load_config(None, ["model.primary=small3d_w0.25", "train.optimizer=adamw", *cfg_overrides])
    torch.manual_seed(seed)
    models = {"primary": build_model("small3d_w0.25", num_classes=3)}
    optimizer = build_optimizer(cfg, models)
    scheduler = build_scheduler(optimizer, warmup=2, total=10)
    algorithm = get_algorithm("supervised")(models, get_algorithm("supervised").Params())
    return models, algorithm, optimizer, scheduler


def steps(run: tuple, span: range) -> list[float]:
    _, algorithm, optimizer, scheduler = run
    losses = []
    for step in span:
        g = torch.Generator().manual_seed(step)
        labeled = {"video": torch.randn(2, 3, 4, 16, 16, generator=g), "label": torch.tensor([0, 2])}
        out, _ = optimize(algorithm, optimizer, scheduler, labeled, None, grad_clip=5.0)
        losses.append(float(out.loss.detach()))
    return losses


def test_a_run_with_several_groups_resumes_exactly_and_refuses_other_groups(tmp_path: Path) -> None:
    keys = ["train.layer_decay=0.7", "train.head_lr_scale=5", "train.decay_norm_and_bias=false"]
    straight = steps(make_run(keys, 0), range(3))
    first = make_run(keys, 0)
    steps(first, range(2))
    models, algorithm, optimizer, scheduler = first
    save_training_state(tmp_path, models=models, optimizer=optimizer, scheduler=scheduler, step=2,
                        algorithm_state=algorithm.state_dict(), model_names=dict.fromkeys(models, "small3d_w0.25"),
                        num_classes=3)
    state = load_training_state(tmp_path)
    resumed = make_run(keys, 123)
    restore_training_state(state, models=resumed[0], optimizer=resumed[2], scheduler=resumed[3])
    resumed[1].load_state_dict(state["algorithm"])
    assert [g["lr"] for g in resumed[2].param_groups] == [g["lr"] for g in optimizer.param_groups]
    assert steps(resumed, range(2, 3)) == pytest.approx(straight[2:], rel=1e-5, abs=1e-6)

    other = make_run([], 0)  # the default single group
    with pytest.raises(CheckpointError, match=re.escape("parameter groups 10 (primary/0, primary/0/no_decay, "
                                                        "primary/1, ...), this run's 1 (all)")):
        restore_training_state(state, models=other[0], optimizer=other[2], scheduler=other[3])


@pytest.mark.parametrize(("override", "message"), [
    ("train.layer_decay=0", "train.layer_decay: must be in (0, 1] (1: off), got 0.0"),
    ("train.layer_decay=1.2", "train.layer_decay: must be in (0, 1]"),
    ("train.head_lr_scale=0", "train.head_lr_scale: must be > 0, got 0.0"),
])
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


@pytest.mark.parametrize("key", ["layer_decay=0.75", "head_lr_scale=10"])
def test_pretraining_refuses_the_fine_tuning_controls(key: str) -> None:
    """Pretraining uses build_optimizer too, but its network's last Linear is the projector's, not a classifier."""
    with pytest.raises(ConfigError, match=rf"^train\.{key.split('=')[0]}: a fine-tuning control"):
        load_pretrain_config(None, [f"train.{key}"])
    assert load_pretrain_config(None, ["train.decay_norm_and_bias=false"]).base.train.decay_norm_and_bias is False
