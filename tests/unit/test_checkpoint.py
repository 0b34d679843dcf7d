"""Checkpoints hold everything needed to continue: the step after a restore equals an uninterrupted run's."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
import torch

from ssl_core.algorithms import get_algorithm, list_algorithms
from ssl_core.checkpoint import (
    STATE_FILE,
    keep_newest_checkpoints,
    load_training_state,
    newest_step_checkpoint,
    restore_training_state,
    save_training_state,
    step_checkpoint_dir,
    step_checkpoints,
)
from ssl_core.config import load_config
from ssl_core.models import build_model
from ssl_core.schedule import build_scheduler, warmup_cosine
from ssl_core.train_step import build_optimizer, optimize

CFG = load_config(None, ["train.warmup_iters=2", "train.iterations=10", "train.optimizer=adamw"])


TEACHER = build_model("small3d_w0.25", num_classes=3).eval().requires_grad_(False)


def make_run(seed: int, name: str = "cmpl") -> tuple:
    torch.manual_seed(seed)
    cls = get_algorithm(name)
    models = {role: build_model("small3d_w0.25", num_classes=3) for role in cls.roles if role not in cls.frozen_roles}
    optimizer = build_optimizer(CFG, models)
    scheduler = build_scheduler(optimizer, warmup=2, total=10)
    params = {"tau": 0.0} if "tau" in {f.name for f in fields(cls.Params)} else {}
    algorithm = cls({**models, **{role: TEACHER for role in cls.frozen_roles}}, cls.Params(**params))
    return models, algorithm, optimizer, scheduler


def batches(step: int) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(100 + step)
    video = torch.randn(2, 3, 4, 16, 16, generator=g)
    weak, strong = torch.randn(2, 2, 3, 4, 16, 16, generator=g)
    # stored teacher probabilities, for noisy_student_offline (the other algorithms ignore the key)
    target = torch.softmax(torch.randn(2, 3, generator=g), dim=-1)
    return {"video": video, "label": torch.tensor([0, 2])}, {"weak": weak, "strong": strong, "target": target}


def run_steps(run: tuple, steps: range) -> list[float]:
    _, algorithm, optimizer, scheduler = run
    losses = []
    for step in steps:
        out, _ = optimize(algorithm, optimizer, scheduler, *batches(step), grad_clip=5.0)
        losses.append(float(out.loss.detach()))
    return losses


@pytest.mark.parametrize("name", sorted(n for n, _, _ in list_algorithms()))
def test_resume_continues_exactly(tmp_path: Path, name: str) -> None:
    """k steps, checkpoint, restore into fresh objects: the next steps equal an uninterrupted run's."""
    straight = run_steps(make_run(0, name), range(5))

    first = make_run(0, name)
    run_steps(first, range(3))
    models, algorithm, optimizer, scheduler = first
    save_training_state(tmp_path, models=models, optimizer=optimizer, scheduler=scheduler, step=3,
                        algorithm_state=algorithm.state_dict(),
                        model_names={role: "small3d_w0.25" for role in models}, num_classes=3)

    resumed = make_run(123, name)  # different initial weights: everything must come from the checkpoint
    state = load_training_state(tmp_path)
    step = restore_training_state(state, models=resumed[0], optimizer=resumed[2], scheduler=resumed[3])
    resumed[1].load_state_dict(state["algorithm"])
    assert step == 3
    assert resumed[3].get_last_lr() == scheduler.get_last_lr()
    assert run_steps(resumed, range(3, 5)) == pytest.approx(straight[3:], rel=1e-5, abs=1e-6)


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


def test_step_checkpoints_are_kept_newest_first_and_resume_latest_skips_other_stages(tmp_path: Path) -> None:
    models, algorithm, optimizer, scheduler = make_run(0, "supervised")

    def save(run: str, step: int, stage: str | None = None) -> Path:
        return save_training_state(
            step_checkpoint_dir(tmp_path / run, step), models=models, optimizer=optimizer, scheduler=scheduler,
            step=step, algorithm_state={}, model_names={}, num_classes=3, meta={"stage": stage} if stage else {},
        ).parent

    for step in (2, 10, 4):
        save("train", step)
    (tmp_path / "train" / "checkpoint_2026-01-01_00-00-00").mkdir()  # Ray Train's names are not step checkpoints
    assert [p.name for p in step_checkpoints(tmp_path / "train")] == [
        "checkpoint_000002", "checkpoint_000004", "checkpoint_000010"]  # by step, not by name
    keep_newest_checkpoints(tmp_path / "train", 2)
    assert [p.name for p in step_checkpoints(tmp_path / "train")] == ["checkpoint_000004", "checkpoint_000010"]

    newest_training = save("other", 1)
    save("pretrain", 6, stage="pretrain")  # written last, but a pretraining checkpoint
    directory, state = newest_step_checkpoint(tmp_path, stage=None)
    assert directory == newest_training and state["step"] == 1
    assert newest_step_checkpoint(tmp_path, stage="pretrain")[0].parent.name == "pretrain"
    with pytest.raises(FileNotFoundError, match="no training checkpoint"):
        newest_step_checkpoint(tmp_path / "train" / "checkpoint_000004", stage=None)


def test_warmup_cosine_values() -> None:
    assert warmup_cosine(0, warmup=4, total=12) == 0.25
    assert warmup_cosine(3, warmup=4, total=12) == 1.0
    assert warmup_cosine(4, warmup=4, total=12) == 1.0
    assert warmup_cosine(8, warmup=4, total=12) == pytest.approx(0.5)
    assert warmup_cosine(12, warmup=4, total=12) == pytest.approx(0.0)
