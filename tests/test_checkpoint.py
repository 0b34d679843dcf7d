"""Checkpoints hold everything needed to continue: the step after a restore equals an uninterrupted run's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_core.algorithms import get_algorithm
from ssl_core.checkpoint import STATE_FILE, load_training_state, restore_training_state, save_training_state
from ssl_core.config import load_config
from ssl_core.loop import build_optimizer, optimize
from ssl_core.models import build_model
from ssl_core.schedule import build_scheduler, warmup_cosine

CFG = load_config(None, ["train.warmup_iters=2", "train.iterations=10", "train.optimizer=adamw"])


def make_run(seed: int) -> tuple:
    torch.manual_seed(seed)
    models = {"primary": build_model("small3d_w0.25", num_classes=3),
              "auxiliary": build_model("small3d_w0.25", num_classes=3)}
    algorithm = get_algorithm("cmpl")(models, get_algorithm("cmpl").Params(tau=0.0))
    optimizer = build_optimizer(CFG, models)
    scheduler = build_scheduler(optimizer, warmup=2, total=10)
    return models, algorithm, optimizer, scheduler


def batches(step: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(100 + step)
    video = torch.randn(2, 3, 4, 16, 16, generator=g)
    weak, strong = torch.randn(2, 2, 3, 4, 16, 16, generator=g)
    return {"video": video, "label": torch.tensor([0, 2])}, {"weak": weak, "strong": strong}


def run_steps(run: tuple, steps: range) -> list[float]:
    _, algorithm, optimizer, scheduler = run
    losses = []
    for step in steps:
        out, _ = optimize(algorithm, optimizer, scheduler, *batches(step), grad_clip=5.0)
        losses.append(float(out.loss))
    return losses


def test_resume_continues_exactly(tmp_path: Path) -> None:
    straight = run_steps(make_run(0), range(5))

    first = make_run(0)
    run_steps(first, range(3))
    models, algorithm, optimizer, scheduler = first
    save_training_state(tmp_path, models=models, optimizer=optimizer, scheduler=scheduler, step=3,
                        algorithm_state=algorithm.state_dict(), model_names={"primary": "small3d_w0.25",
                        "auxiliary": "small3d_w0.25"}, num_classes=3)

    resumed = make_run(seed=123)  # different initial weights: everything must come from the checkpoint
    state = load_training_state(tmp_path)
    step = restore_training_state(state, models=resumed[0], optimizer=resumed[2], scheduler=resumed[3])
    assert step == 3
    assert resumed[3].get_last_lr() == scheduler.get_last_lr()
    assert run_steps(resumed, range(3, 5)) == pytest.approx(straight[3:], rel=1e-6, abs=1e-7)


def test_checkpoint_is_written_atomically_and_loaded_without_pickle(tmp_path: Path) -> None:
    models, algorithm, optimizer, scheduler = make_run(0)
    save_training_state(tmp_path, models=models, optimizer=optimizer, scheduler=scheduler, step=1,
                        algorithm_state={}, model_names={"primary": "small3d_w0.25"}, num_classes=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]
    # a pickled arbitrary object is refused by weights_only loading
    torch.save({"evil": object()}, tmp_path / STATE_FILE)
    with pytest.raises(Exception, match="(?i)weights_only|unsupported"):
        load_training_state(tmp_path)


def test_missing_checkpoint_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_training_state(tmp_path)


def test_warmup_cosine_values() -> None:
    assert warmup_cosine(0, warmup=4, total=12) == 0.25
    assert warmup_cosine(3, warmup=4, total=12) == 1.0
    assert warmup_cosine(4, warmup=4, total=12) == 1.0
    assert warmup_cosine(8, warmup=4, total=12) == pytest.approx(0.5)
    assert warmup_cosine(12, warmup=4, total=12) == pytest.approx(0.0)
