"""Exponential moving average of a model's weights: the Mean Teacher update and the frozen copy it averages into
(Mean Teacher's teacher, every algorithm's train.ema_decay copies).

Try it:
    python -c "import torch; from ssl_core.algorithms.ema import ema_update, frozen_copy; \
s = torch.nn.Linear(2, 2); t = frozen_copy(s); ema_update(t, s, 0.9); print(t.weight.requires_grad)"
"""

from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Mean Teacher: theta_T <- m theta_T + (1 - m) theta_S, in place.

    Floating-point buffers (BatchNorm running stats) follow the same average; integer buffers
    (num_batches_tracked) are copied, since averaging a counter means nothing.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ema_update: momentum must be in [0, 1], got {momentum}")
    t_state, s_state = teacher.state_dict(), student.state_dict()
    if t_state.keys() != s_state.keys():
        diff = sorted(set(t_state) ^ set(s_state))
        raise ValueError(f"ema_update: teacher and student differ in state keys, e.g. {diff[:5]}")
    for key, t_value in t_state.items():
        s_value = s_state[key].to(t_value.device)
        if t_value.is_floating_point():
            t_value.mul_(momentum).add_(s_value, alpha=1.0 - momentum)
        else:
            t_value.copy_(s_value)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with requires_grad off: an average is only ever updated by ema_update."""
    copied = copy.deepcopy(model).eval()
    for p in copied.parameters():
        p.requires_grad_(False)
    return copied
