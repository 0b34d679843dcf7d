"""The GPU step levers, checked where a CPU can check them: the weak view without gradient, channels_last_3d
models and clips, in-place compile keeping checkpoint keys, metrics left on the device.

    pytest tests/unit/test_step_levers.py
"""

from __future__ import annotations

import pytest
import torch

from ssl_core.algorithms import get_algorithm
from ssl_core.config import load_config
from ssl_core.schedule import build_scheduler
from ssl_core.train_step import build_models, build_optimizer, input_memory_format, make_batches, optimize, place_models
from tests.unit.handmade import FIXMATCH_ROWS, TableModel, fixmatch_batch


class Recorder(TableModel):
    """TableModel that notes, per forward, the batch size and whether gradients were on."""

    def __init__(self, rows: list[list[float]]) -> None:
        super().__init__(rows)
        self.calls: list[tuple[int, bool]] = []

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        self.calls.append((video.shape[0], torch.is_grad_enabled()))
        return super().forward(video)


@pytest.mark.parametrize("name", ["fixmatch", "cmpl"])
def test_weak_no_grad_keeps_the_loss_and_forwards_the_weak_view_without_gradient(name: str) -> None:
    cls = get_algorithm(name)
    losses, calls = {}, {}
    for weak_no_grad in (False, True):
        models = {role: Recorder(FIXMATCH_ROWS) for role in cls.roles}
        algo = cls(models, cls.Params(tau=0.95, weak_no_grad=weak_no_grad))
        losses[weak_no_grad] = float(algo.train_step(*fixmatch_batch()).loss.detach())
        calls[weak_no_grad] = models["primary"].calls
    assert losses[True] == pytest.approx(losses[False], rel=1e-12)  # no BatchNorm here: the same logits
    assert calls[False] == [(9, True)]  # labeled + weak + strong in one forward
    assert calls[True] == [(5, True), (4, False)]  # labeled + strong with gradient, weak without


def _cfg(*overrides: str):
    return load_config(None, ["model.primary=small3d", "train.batch_size=2", "train.mu=1", "augment.crop_size=16",
                              *overrides])


def test_channels_last_models_and_clips_give_the_same_step() -> None:
    torch.manual_seed(0)
    lb = torch.randint(0, 256, (2, 4, 20, 20, 3), dtype=torch.uint8)
    y = torch.tensor([0, 1])
    results = {}
    for channels_last in (False, True):
        cfg = _cfg(f"train.channels_last={str(channels_last).lower()}", "algorithm.name=supervised")
        torch.manual_seed(1)
        models = place_models(build_models(cfg, 3), cfg, torch.device("cpu"))
        optimizer = build_optimizer(cfg, models)
        scheduler = build_scheduler(optimizer, warmup=0, total=10)
        algo = get_algorithm("supervised")(models, cfg.algorithm.resolved_params())
        torch.manual_seed(2)
        labeled, _ = make_batches(lb, y, None, None, cfg.augment, torch.device("cpu"),
                                  memory_format=input_memory_format(cfg))
        fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
        assert labeled["video"].is_contiguous(memory_format=fmt)
        conv = next(p for p in models["primary"].parameters() if p.ndim == 5)
        assert conv.is_contiguous(memory_format=fmt)
        _, metrics = optimize(algo, optimizer, scheduler, labeled, None, grad_clip=5.0)
        # Metrics stay tensors (no host sync in the step); the window brings them over.
        assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in metrics.values())
        results[channels_last] = float(metrics["loss/total"])
    assert results[True] == pytest.approx(results[False], rel=1e-4)


def test_compile_is_in_place_so_checkpoints_keep_their_keys() -> None:
    cfg = _cfg("train.compile=true", "algorithm.name=supervised")
    built = build_models(cfg, 3)
    keys = list(built["primary"].state_dict())
    placed = place_models(built, cfg, torch.device("cpu"))
    assert placed["primary"] is built["primary"] and list(placed["primary"].state_dict()) == keys
    assert placed["primary"]._compiled_call_impl is not None  # nn.Module.compile's mark


def test_the_optimizer_is_fused_only_on_cuda() -> None:
    cfg = _cfg("train.optimizer=adamw")
    optimizer = build_optimizer(cfg, build_models(cfg, 3))
    assert not optimizer.defaults["fused"]
