"""A seeded pretrainer and the resume check shared by the pretraining checkpoint tests (test_pretrain,
test_videomae): `python -m pytest tests/unit/test_pretrain.py tests/unit/test_videomae.py -k checkpoint`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import Tensor

from ssl_core.pretrain.config import PretrainSetup
from ssl_core.pretrain.step import Pretrainer, build_net, pretrain_optimize, restore_pretrain_state
from ssl_core.schedule import build_scheduler
from ssl_core.train_step import build_optimizer

Trainer = tuple[Pretrainer, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]


def fresh_pretrainer(setup: PretrainSetup, classes: list[str], queue_size: int) -> Trainer:
    """A 10-iteration pretrainer with its optimizer and warm-up schedule, seeded: two calls build the same one."""
    torch.manual_seed(0)
    net, _ = build_net(setup, classes)
    optimizer = build_optimizer(setup.base, {"net": net})
    return (Pretrainer(net, setup.pretrain, iterations=10, queue_size=queue_size, seed=0), optimizer,
            build_scheduler(optimizer, warmup=2, total=10))


def assert_resume_takes_the_same_step(state: Mapping[str, Any], original: Trainer, resumed: Trainer,
                                      views: Tensor, labels: Tensor | None) -> None:
    """`resumed`, restored from `state` (saved at step 2), takes the same next step as `original` from the same
    random state: masks, crops and queue draws included."""
    assert restore_pretrain_state(state, trainer=resumed[0], optimizer=resumed[1], scheduler=resumed[2]) == 2
    rng = torch.get_rng_state()
    expected = pretrain_optimize(*original, views, labels, grad_clip=5.0)
    torch.set_rng_state(rng)
    got = pretrain_optimize(*resumed, views, labels, grad_clip=5.0)
    assert float(got["loss/total"]) == pytest.approx(float(expected["loss/total"]), rel=1e-5)
