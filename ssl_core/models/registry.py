"""Model registry: name -> keyword-only builder returning an nn.Module that maps video to logits.

Every registered model maps float (B, 3, T, h, w) -> logits (B, num_classes). A name may carry a channel
width suffix `_w<float>`: `r3d_50_w0.25` is r3d_50 at 1/4 width (CMPL's auxiliary "R50-1/4"), and then an
input-view suffix `+tg`: the model reads the temporal gradient of the clip (frame differences, LTG / MvPL's
cheap motion view) instead of RGB. The view is part of the model (a forward pre-hook), so evaluation,
checkpoints and inference feed it the same RGB clips as any other model.

Try it:
    python -c "from ssl_core.models import list_models; print(*list_models(), sep='\\n')"
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor, nn


class ModelBuilder(Protocol):
    def __call__(self, *, num_classes: int, width: float = 1.0, dropout: float = 0.0) -> nn.Module: ...


_BUILDERS: dict[str, tuple[ModelBuilder, str]] = {}
_WIDTH_SUFFIX = re.compile(r"^(?P<base>.+)_w(?P<width>\d+(?:\.\d+)?|\.\d+)$")
TG_SUFFIX = "+tg"


def temporal_gradient(video: Tensor) -> Tensor:  # (B, 3, T, h, w) -> (B, 3, T, h, w)
    """Differences of consecutive frames; the last difference is repeated so T (and the model) stay the same.
    Static appearance cancels out and what moves remains: a view whose mistakes differ from RGB's."""
    diff = video[:, :, 1:] - video[:, :, :-1]
    return torch.cat([diff, diff[:, :, -1:]], dim=2) if video.shape[2] > 1 else torch.zeros_like(video)


def _temporal_gradient_hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (temporal_gradient(args[0]), *args[1:])


def register_model(name: str, description: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a keyword-only builder `(*, num_classes, width=1.0, dropout=0.0) -> nn.Module`."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        if _WIDTH_SUFFIX.match(name):
            raise ValueError(f"model name {name!r} must not end in a width suffix _w<float>")
        _BUILDERS[name] = (builder, description)
        return builder

    return decorator


def parse_model_name(name: str) -> tuple[str, float]:
    """'r3d_50_w0.25' -> ('r3d_50', 0.25); 'r3d_18' -> ('r3d_18', 1.0); a `+tg` view suffix is allowed.
    Unknown base -> KeyError."""
    plain = name.removesuffix(TG_SUFFIX)
    match = _WIDTH_SUFFIX.match(plain)
    base, width = (match["base"], float(match["width"])) if match else (plain, 1.0)
    if base not in _BUILDERS:
        available = ", ".join(sorted(_BUILDERS))
        raise KeyError(f"unknown model {name!r}; available: {available} (optionally with a _w<float> suffix)")
    if width <= 0:
        raise ValueError(f"model {name!r}: width must be > 0, got {width}")
    return base, width


def build_model(name: str, *, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """Build a registered model by name (width suffix allowed)."""
    if num_classes < 1:
        raise ValueError(f"model {name!r}: num_classes must be >= 1, got {num_classes}")
    base, width = parse_model_name(name)
    builder, _ = _BUILDERS[base]
    model = builder(num_classes=num_classes, width=width, dropout=dropout)
    if name.endswith(TG_SUFFIX):
        model.register_forward_pre_hook(_temporal_gradient_hook)
    return model


def list_models() -> list[tuple[str, str]]:
    """(name, description) of every registered base model, sorted by name."""
    return [(name, description) for name, (_, description) in sorted(_BUILDERS.items())]
