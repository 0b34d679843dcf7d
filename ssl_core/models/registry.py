"""Model registry: name -> keyword-only builder returning an nn.Module that maps video to logits.

Every registered model maps float (B, 3, T, h, w) -> logits (B, num_classes). A name may carry a channel
width suffix `_w<float>`: `r3d_50_w0.25` is r3d_50 at 1/4 width (CMPL's auxiliary "R50-1/4"), and then an
input-view suffix `+tg`: the model reads the temporal gradient of the clip (frame differences, LTG / MvPL's
cheap motion view) instead of RGB. The view is part of the model (a forward pre-hook), so evaluation,
checkpoints and inference feed it the same RGB clips as any other model.

An entry may carry the input its published weights expect (`InputSpec`: frames, stride, crop, resize, mean / std,
where the weights live). The config takes its clip settings as defaults (ssl_core/config.py), and the model
normalises to its weights' mean / std itself: the data pipeline normalises every clip with vidssl's statistics
(ssl_core/data/transforms.py MEAN / STD), and a pre-hook maps that onto the entry's, so training, evaluation,
checkpoints and inference agree without carrying the statistics around.

Try it:
    python -c "from ssl_core.models import list_models; print(*list_models(), sep='\\n')"
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from ssl_core.data.transforms import MEAN, STD

Stats = tuple[float, float, float]
IMAGENET_MEAN: Stats = (0.485, 0.456, 0.406)
IMAGENET_STD: Stats = (0.229, 0.224, 0.225)


class ModelBuilder(Protocol):
    def __call__(self, *, num_classes: int, width: float = 1.0, dropout: float = 0.0) -> nn.Module: ...


@dataclass(frozen=True)
class InputSpec:
    """The clips a registered model's published weights were trained on."""

    frames: int  # frames per clip
    stride: int  # source frames between two clip frames (sampling rate; at ~30 fps sources)
    crop: int  # side of the square model input
    resize: int  # short side before the crop
    mean: Stats  # per-channel statistics the weights expect, on [0, 1] pixels
    std: Stats
    weights: str  # where the published weights live
    min_frames: int = 1  # the smallest input the architecture takes
    min_side: int = 1
    fixed: bool = False  # only frames x crop x crop fits (a fixed position table)
    multiple: tuple[int, int] = (1, 1)  # frames and side must be multiples of these (a ViT's tubelets)


_BUILDERS: dict[str, tuple[ModelBuilder, str]] = {}
_INPUTS: dict[str, InputSpec] = {}
_WEIGHTS: dict[str, str] = {}
_FIXED_WIDTH: set[str] = set()  # entries without width variants: a width suffix on them is refused by name
_WIDTH_SUFFIX = re.compile(r"^(?P<base>.+)_w(?P<width>\d+(?:\.\d+)?|\.\d+)$")
TG_SUFFIX = "+tg"


def temporal_gradient(video: Tensor) -> Tensor:  # (B, 3, T, h, w) -> (B, 3, T, h, w)
    """Differences of consecutive frames; the last difference is repeated so T (and the model) stay the same.
    Static appearance cancels out and what moves remains: a view whose mistakes differ from RGB's."""
    diff = video[:, :, 1:] - video[:, :, :-1]
    return torch.cat([diff, diff[:, :, -1:]], dim=2) if video.shape[2] > 1 else torch.zeros_like(video)


def _temporal_gradient_hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (temporal_gradient(args[0]), *args[1:])


def _renormalise_hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    # Module-level (not a closure) so that deepcopy (EMA) and pickling (MLflow) keep working.
    return (torch.addcmul(module.input_shift, args[0], module.input_scale), *args[1:])


def add_input_normalisation(model: nn.Module, mean: Stats, std: Stats) -> nn.Module:
    """Make `model`, fed clips normalised with vidssl's MEAN / STD, see them normalised with `mean` / `std`:
    (x * STD + MEAN - mean) / std. Non-persistent buffers: the state dict keeps the published keys."""
    scale = torch.tensor(STD) / torch.tensor(std)
    shift = (torch.tensor(MEAN) - torch.tensor(mean)) / torch.tensor(std)
    model.register_buffer("input_scale", scale.view(1, 3, 1, 1, 1), persistent=False)
    model.register_buffer("input_shift", shift.view(1, 3, 1, 1, 1), persistent=False)
    model.register_forward_pre_hook(_renormalise_hook)
    return model


def register_model(
    name: str, description: str, *, inputs: InputSpec | None = None, weights: str | None = None,
    width_scalable: bool = True,
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a keyword-only builder `(*, num_classes, width=1.0, dropout=0.0) -> nn.Module`.

    inputs: the clips its published weights expect (config defaults, normalisation); weights: where published
    weights live, for an entry without `inputs` (it takes the run's clip settings and vidssl's normalisation);
    width_scalable=False: the entry is width 1 only, and parse_model_name refuses a `_w<float>` suffix on it, so a
    config naming one fails when it is read, not when a worker builds the model."""

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        if _WIDTH_SUFFIX.match(name):
            raise ValueError(f"model name {name!r} must not end in a width suffix _w<float>")
        _BUILDERS[name] = (builder, description)
        if not width_scalable:
            _FIXED_WIDTH.add(name)
        if inputs is not None:
            _INPUTS[name] = inputs
        _WEIGHTS[name] = inputs.weights if inputs is not None else (weights or "none published (random init)")
        return builder

    return decorator


def parse_model_name(name: str) -> tuple[str, float]:
    """'r3d_50_w0.25' -> ('r3d_50', 0.25); 'r3d_18' -> ('r3d_18', 1.0); a `+tg` view suffix is allowed.
    Unknown base -> KeyError; a width <= 0, or a width suffix on a width-1-only entry -> ValueError."""
    plain = name.removesuffix(TG_SUFFIX)
    match = _WIDTH_SUFFIX.match(plain)
    base, width = (match["base"], float(match["width"])) if match else (plain, 1.0)
    if base not in _BUILDERS:
        available = ", ".join(sorted(_BUILDERS))
        raise KeyError(f"unknown model {name!r}; available: {available} (optionally with a _w<float> suffix)")
    if width <= 0:
        raise ValueError(f"model {name!r}: width must be > 0, got {width}")
    if match and base in _FIXED_WIDTH:
        scalable = ", ".join(sorted(set(_BUILDERS) - _FIXED_WIDTH))
        raise ValueError(f"model {name!r}: {base} has no width variants (no _w<float> suffix); width-scalable: "
                         f"{scalable}")
    return base, width


def build_model(name: str, *, num_classes: int, dropout: float = 0.0) -> nn.Module:
    """Build a registered model by name (width suffix allowed)."""
    if num_classes < 1:
        raise ValueError(f"model {name!r}: num_classes must be >= 1, got {num_classes}")
    base, width = parse_model_name(name)
    builder, _ = _BUILDERS[base]
    model = builder(num_classes=num_classes, width=width, dropout=dropout)
    spec = _INPUTS.get(base)
    if spec is not None and (spec.mean, spec.std) != (MEAN, STD):
        add_input_normalisation(model, spec.mean, spec.std)
    if name.endswith(TG_SUFFIX):
        model.register_forward_pre_hook(_temporal_gradient_hook)
    return model


def list_models() -> list[tuple[str, str]]:
    """(name, description) of every registered base model, sorted by name."""
    return [(name, description) for name, (_, description) in sorted(_BUILDERS.items())]


def model_inputs(name: str) -> InputSpec | None:
    """The input the entry's published weights expect (width / view suffixes allowed), or None."""
    return _INPUTS.get(parse_model_name(name)[0])


def published_weights(name: str) -> str:
    return _WEIGHTS[parse_model_name(name)[0]]
