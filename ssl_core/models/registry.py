"""Model registry: name -> keyword-only builder returning an nn.Module that maps video to logits.

Every registered model maps float (B, 3, T, h, w) -> logits (B, num_classes). A name may carry a channel
width suffix `_w<float>`: `r3d_50_w0.25` is r3d_50 at 1/4 width (CMPL's auxiliary "R50-1/4").

Try it:
    python -c "from ssl_core.models import list_models; print(*list_models(), sep='\\n')"
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from torch import nn


class ModelBuilder(Protocol):
    def __call__(self, *, num_classes: int, width: float = 1.0, dropout: float = 0.0) -> nn.Module: ...


_BUILDERS: dict[str, tuple[ModelBuilder, str]] = {}
_WIDTH_SUFFIX = re.compile(r"^(?P<base>.+)_w(?P<width>\d+(?:\.\d+)?|\.\d+)$")


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
    """'r3d_50_w0.25' -> ('r3d_50', 0.25); 'r3d_18' -> ('r3d_18', 1.0). Unknown base -> KeyError."""
    match = _WIDTH_SUFFIX.match(name)
    base, width = (match["base"], float(match["width"])) if match else (name, 1.0)
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
    return builder(num_classes=num_classes, width=width, dropout=dropout)


def list_models() -> list[tuple[str, str]]:
    """(name, description) of every registered base model, sorted by name."""
    return [(name, description) for name, (_, description) in sorted(_BUILDERS.items())]
