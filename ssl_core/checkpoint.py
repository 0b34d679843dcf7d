"""Training state <-> a checkpoint directory: models, optimizer, scheduler, step, algorithm state, RNG.

Written atomically (a temporary file renamed into place) and read with `torch.load(weights_only=True)`,
so loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ssl_core.models import build_model
from ssl_core.unwrap import unwrap
from ssl_core.user_errors import UserError

if TYPE_CHECKING:
    from ssl_core.config import Config

STATE_FILE = "state.pt"

class CheckpointError(UserError, ValueError):
    """A checkpoint's state file does not load, or a run folder holds no checkpoint that does."""


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


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
    """The training state of a checkpoint directory; CheckpointError (naming the file) when it does not load."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {STATE_FILE} in checkpoint directory {directory}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message spans many lines (with terminal escapes); what follows "WeightsUnpickler error:" says why.
        found = re.search(r"WeightsUnpickler error:[ \t]*([^\n]*)", str(err))
        why = found.group(1).strip() if found and found.group(1).strip() else type(err).__name__
        raise CheckpointError(f"{path} does not load (weights_only loading refuses it: {why}); it is not a vidssl "
                              "checkpoint") from err
    except Exception as err:  # bytes torch.save did not write (cut short, zero, other) raise anything
        text = str(err).strip()
        reason = text.splitlines()[0].split(". ")[0] if text else ""
        reason = f"{type(err).__name__}: {reason}" if reason else type(err).__name__
        raise CheckpointError(f"{path} does not load ({path.stat().st_size} bytes: {reason}); it is truncated or "
                              "not a checkpoint") from err
    if not isinstance(state, dict) or "models" not in state or "step" not in state:
        raise CheckpointError(f"{path} loads but holds no training state (no models and step)")
    return state


def first_intact(
    candidates: Sequence[Path], warn: Callable[[str], None] = _warn
) -> tuple[Path, dict[str, Any]] | None:
    """The first of `candidates` (checkpoint directories, most preferred first) whose state loads, and that state;
    each one that does not is skipped with a warning naming it. None when none loads."""
    for directory in candidates:
        try:
            return directory, load_training_state(directory)
        except CheckpointError as err:
            warn(f"skipping checkpoint {directory}: {err}")
    return None


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run folder's checkpoint directories holding a state file, newest first: Ray Train names them with a
    sortable timestamp, the Ray-free runners with a zero-padded step (step_checkpoint_dir)."""
    return sorted((p.parent for p in Path(run_dir).glob(f"checkpoint_*/{STATE_FILE}")), reverse=True)


def latest_intact_checkpoint(
    path: str | Path, warn: Callable[[str], None] = _warn
) -> tuple[Path, dict[str, Any]]:
    """`path` and its state if it is a checkpoint directory (CheckpointError if it does not load), else the newest
    checkpoint of run folder `path` that loads, older ones standing in for unreadable ones (with a warning)."""
    path = Path(path)
    if (path / STATE_FILE).exists():
        return path, load_training_state(path)
    candidates = run_checkpoints(path)
    if not candidates:
        raise FileNotFoundError(f"{path} is neither a checkpoint directory nor a run folder holding one")
    found = first_intact(candidates, warn)
    if found is None:
        raise CheckpointError(f"run folder {path}: none of its {len(candidates)} checkpoints loads (see the warnings "
                              "above); it cannot be resumed or evaluated")
    return found


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
    saved = [g.get("name", "all") for g in state["optimizer"]["param_groups"]]
    ours = [g.get("name", "all") for g in optimizer.param_groups]
    if saved != ours:
        # torch would only say "a different number of parameter groups", or load other groups' lrs silently
        raise CheckpointError(f"the checkpoint's optimizer has parameter groups {_first_groups(saved)}, this run's "
                              f"{_first_groups(ours)}: train.head_lr_scale / layer_decay / decay_norm_and_bias "
                              "must be those of the run that saved it")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def _first_groups(names: Sequence[str]) -> str:
    return f"{len(names)} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"


def latest_checkpoint_dir(path: str | Path, warn: Callable[[str], None] = _warn) -> Path:
    """`path` if it is a checkpoint directory, else the newest `checkpoint_*` directory of a run folder whose
    state loads (latest_intact_checkpoint)."""
    return latest_intact_checkpoint(path, warn)[0]


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
    """The `role` model of a checkpoint directory (or of a run folder's latest intact checkpoint)."""
    directory, state = latest_intact_checkpoint(path)
    return model_from_state(state, role, directory)


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


def newest_step_checkpoint(
    storage: str | Path, *, stage: str | None, warn: Callable[[str], None] = _warn
) -> tuple[Path, dict[str, Any]]:
    """The most recently written step checkpoint under any run folder of `storage` whose meta names `stage`
    (None: a training checkpoint) and whose state loads, and that state: what `--resume latest` of a Ray-free
    runner continues. An unreadable one is skipped with a warning; CheckpointError when only those are left."""
    candidates = [d for run in Path(storage).glob("*/") for d in step_checkpoints(run)]
    unreadable: list[Path] = []
    for directory in sorted(candidates, key=lambda d: (d / STATE_FILE).stat().st_mtime, reverse=True):
        try:
            state = load_training_state(directory)
        except CheckpointError as err:
            warn(f"skipping checkpoint {directory}: {err}")
            unreadable.append(directory)
            continue
        if (state.get("meta") or {}).get("stage") == stage:
            return directory, state
    kind = "training" if stage is None else stage
    if unreadable:
        runs = sorted({str(d.parent) for d in unreadable})
        raise CheckpointError(f"no intact {kind} checkpoint under {storage}: the newest ones (run folder "
                              f"{', '.join(runs)}) do not load (see the warnings above)")
    raise FileNotFoundError(f"no {kind} checkpoint_<step> folder under any run folder of {storage}")
