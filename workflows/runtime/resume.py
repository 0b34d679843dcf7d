"""Where the Ray driver's `--resume` continues a run (training and pretraining): the run folder's newest checkpoint
whose state loads, chosen before Ray Train starts so that its workers never read an unreadable one.

    python -m workflows.train --config configs/demo.yaml --resume latest

Ray Train 2.x resumes a run from the latest checkpoint its record in the run folder (SNAPSHOT) names. When that
one does not load (cut short by a full disk or a killed copy), its workers would fail on it and Ray Train would
retry the same file until FailureConfig gives up. Instead the driver moves the record aside (kept, renamed: the
checkpoints it lists stay where they are) so that Ray Train starts without a checkpoint of its own, and hands the
workers the newest intact checkpoint (WorkerArgs.resume_from), which they load when Ray Train has none for them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ssl_core.checkpoint import CheckpointError, first_intact, run_checkpoints

SNAPSHOT = "checkpoint_manager_snapshot.json"  # ray.train.v2 CHECKPOINT_MANAGER_SNAPSHOT_FILENAME


class RunFinished(Exception):
    """`--resume` of a run that already trained train.iterations steps and whose MLflow run is FINISHED."""

    def __init__(self, run_dir: Path, step: int) -> None:
        super().__init__(f"run {run_dir.name} finished at step {step}: nothing to resume (raise train.iterations "
                         f"with --set train.iterations=N to train further); run folder {run_dir}")
        self.run_dir = run_dir
        self.step = step


@dataclass(frozen=True)
class ResumePoint:
    directory: Path  # the checkpoint the run continues from
    step: int
    handed: bool  # True: Ray Train would not resume from it by itself; the workers are handed `directory`


def _warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


def ray_latest(run_dir: Path) -> Path | None:
    """The checkpoint Ray Train resumes the run from by itself: the latest its record names (None: no record, or
    one that names none or does not parse, in which case Ray Train itself refuses it)."""
    try:
        record = json.loads((run_dir / SNAPSHOT).read_text())
        name = (record.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
    except (OSError, ValueError, AttributeError):
        return None
    return run_dir / name if isinstance(name, str) and name else None


def choose_checkpoint(run_dir: Path, warn: Callable[[str], None] = _warn) -> ResumePoint | None:
    """The newest checkpoint of `run_dir` whose state loads (each newer unreadable one skipped with a warning naming
    it); None when the run saved none (its workers start afresh, as before). CheckpointError when none loads."""
    candidates = run_checkpoints(run_dir)
    if not candidates:
        return None
    found = first_intact(candidates, warn)
    if found is None:
        raise CheckpointError(f"run folder {run_dir}: none of its {len(candidates)} checkpoints loads (see the "
                              "warnings above); it cannot be resumed: start a new run without --resume")
    directory, state = found
    return ResumePoint(directory, int(state["step"]), handed=ray_latest(run_dir) != directory)


def hand_over(run_dir: Path, point: ResumePoint, warn: Callable[[str], None] = _warn) -> str | None:
    """Prepare the run folder for Ray Train to resume at `point`: the checkpoint path the workers are to load
    (WorkerArgs.resume_from), or None when Ray Train hands them `point` itself. Ray Train's record, naming another
    checkpoint as its latest, is renamed aside (not deleted) so that Ray Train does not pick that one."""
    if not point.handed:
        return None
    record = run_dir / SNAPSHOT
    if record.exists():
        aside = run_dir / f"{SNAPSHOT}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}"
        record.rename(aside)
        warn(f"Ray Train's checkpoint record names a checkpoint that does not load; kept as {aside.name}")
    print(f"resuming from {point.directory} at step {point.step}", flush=True)
    return str(point.directory)
