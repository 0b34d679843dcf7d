"""Training state <-> a checkpoint directory: models, optimizer, scheduler, step, algorithm state, RNG.

Written atomically (a temporary file renamed into place) and read with `torch.load(weights_only=True)`,
so loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ssl_core.models import build_model
from ssl_core.unwrap import unwrap

if TYPE_CHECKING:
    from ssl_core.config import Config

STATE_FILE = "state.pt"


def save_training_state(
    directory: str | Path,
    *,
    models: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    algorithm_state: Mapping[str, Any],
    model_names: Mapping[str, str],
    num_classes: int,
    meta: Mapping[str, Any] | None = None,
    ema: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """`meta` (see `model_meta`) tells evaluation and prediction how to feed the models and name classes.
    `ema`: role -> EMA weights (train.ema_decay); inference takes them in place of the raw ones."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "models": {role: unwrap(m).state_dict() for role, m in models.items()},
        "model_names": dict(model_names),
        "num_classes": num_classes,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "algorithm": dict(algorithm_state),
        "torch_rng": torch.get_rng_state(),
        "meta": dict(meta or {}),
        "ema": {role: dict(weights) for role, weights in (ema or {}).items()},
    }
    path = directory / STATE_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def model_meta(cfg: Config, classes: Sequence[str]) -> dict[str, Any]:
    """What a trained model needs beside its weights: class names and the clip it was trained on."""
    return {"classes": list(classes), "num_frames": cfg.data.num_frames, "stride": cfg.data.stride,
            "size": cfg.data.size, "crop_size": cfg.augment.crop_size}


def load_training_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {STATE_FILE} in checkpoint directory {directory}")
    return torch.load(path, map_location="cpu", weights_only=True)


def restore_training_state(
    state: Mapping[str, Any],
    *,
    models: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> int:
    """Load `state` into the given objects; returns the step to continue from."""
    missing = set(models) - set(state["models"])
    if missing:
        raise KeyError(f"checkpoint has no weights for model roles {sorted(missing)}")
    for role, model in models.items():
        unwrap(model).load_state_dict(state["models"][role])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def latest_checkpoint_dir(path: str | Path) -> Path:
    """`path` if it is a checkpoint directory, else the newest `checkpoint_*` directory of a run folder."""
    path = Path(path)
    if (path / STATE_FILE).exists():
        return path
    # Ray Train names checkpoint folders with a sortable timestamp.
    found = sorted(p.parent for p in path.glob(f"checkpoint_*/{STATE_FILE}"))
    if not found:
        raise FileNotFoundError(f"{path} is neither a checkpoint directory nor a run folder holding one")
    return found[-1]


def deployed_weights(state: Mapping[str, Any], role: str) -> Mapping[str, Any]:
    """The weights to evaluate, register and deploy: the EMA copy when the run kept one, else the raw ones."""
    return state.get("ema", {}).get(role) or state["models"][role]


def model_from_state(state: Mapping[str, Any], role: str, where: str | Path) -> nn.Module:
    """The deployed `role` model (EMA weights when kept) of a loaded training state; `where` names the
    checkpoint in errors."""
    if role not in state["models"]:
        raise KeyError(f"checkpoint {where} has no {role!r} model; it has {sorted(state['models'])}")
    model = build_model(state["model_names"][role], num_classes=state["num_classes"])
    model.load_state_dict(deployed_weights(state, role))
    return model


def load_checkpoint_model(path: str | Path, role: str = "primary") -> nn.Module:
    """The `role` model of a checkpoint directory (or of a run folder's latest checkpoint)."""
    directory = latest_checkpoint_dir(path)
    return model_from_state(load_training_state(directory), role, directory)


def step_checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """`<run_dir>/checkpoint_<step>`: where the Ray-free runners write (Ray Train names its own by time)."""
    return Path(run_dir) / f"checkpoint_{step:06d}"


def step_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run folder's step_checkpoint_dir folders holding a state, oldest step first."""
    found = [p.parent for p in Path(run_dir).glob(f"checkpoint_*/{STATE_FILE}")
             if p.parent.name.removeprefix("checkpoint_").isdigit()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("checkpoint_")))


def keep_newest_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the `keep` newest step checkpoints of a run folder (train.keep_checkpoints)."""
    for old in step_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def newest_step_checkpoint(storage: str | Path, *, stage: str | None) -> tuple[Path, dict[str, Any]]:
    """The most recently written step checkpoint under any run folder of `storage` whose meta names `stage`
    (None: a training checkpoint), and its loaded state: what `--resume latest` of a Ray-free runner continues."""
    candidates = [d for run in Path(storage).glob("*/") for d in step_checkpoints(run)]
    for directory in sorted(candidates, key=lambda d: (d / STATE_FILE).stat().st_mtime, reverse=True):
        state = load_training_state(directory)
        if (state.get("meta") or {}).get("stage") == stage:
            return directory, state
    kind = "training" if stage is None else stage
    raise FileNotFoundError(f"no {kind} checkpoint_<step> folder under any run folder of {storage}")
