"""ssl_core.run_folder: a new run never gets another run's folder, and one that fails before its first checkpoint
leaves none behind (with workflows.runtime.run_state.preparing, which also marks the MLflow run).

    .venv/bin/python -m pytest -q tests/unit/test_run_folder.py
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ssl_core.run_folder import claim_run_dir


def test_runs_with_the_same_name_get_their_own_folders(tmp_path: Path) -> None:
    (tmp_path / "runs" / "pretrain-x").mkdir(parents=True)
    (tmp_path / "runs" / "pretrain-x" / "checkpoint_000100").mkdir()  # someone's run
    with ThreadPoolExecutor(8) as pool:  # 8 runs started at once under one (timestamped) name
        claimed = list(pool.map(lambda _: claim_run_dir(tmp_path / "runs", "pretrain-x"), range(8)))
    names = sorted(name for name, _ in claimed)
    assert names == sorted(f"pretrain-x-{k}" for k in range(2, 10))
    assert all(folder.is_dir() and not any(folder.iterdir()) for _, folder in claimed)
    assert (tmp_path / "runs" / "pretrain-x" / "checkpoint_000100").is_dir()  # untouched


def test_a_failed_run_folder_without_a_checkpoint_is_discarded_and_one_with_a_checkpoint_or_an_interrupt_kept(
    tmp_path: Path,
) -> None:
    from ssl_core.run_folder import discarded_on_failure

    for name, checkpoint, error, kept in [("plain", False, ValueError, False), ("trained", True, ValueError, True),
                                          ("ctrl-c", False, KeyboardInterrupt, True)]:
        _, run_dir = claim_run_dir(tmp_path, name)
        (run_dir / "config.yaml").write_text("train: {}\n")
        if checkpoint:
            (run_dir / "checkpoint_000002").mkdir()
        with pytest.raises(error), discarded_on_failure(run_dir):
            raise error("stop")
        assert run_dir.exists() == kept, name
    _, run_dir = claim_run_dir(tmp_path, "fine")
    with discarded_on_failure(run_dir):
        pass
    assert run_dir.exists()


def test_a_failed_preparation_marks_the_mlflow_run_and_removes_a_new_run_folder(tmp_path: Path) -> None:
    from workflows.runtime.run_state import preparing

    class Tracker:
        run_id = "r1"

        def __init__(self, fails: bool = False) -> None:
            self.status: str | None = None
            self.fails = fails

        def finish(self, status: str) -> None:
            if self.fails:
                raise ConnectionError("server gone")
            self.status = status

    new, resumed, interrupted, unreachable = Tracker(), Tracker(), Tracker(), Tracker(fails=True)
    _, run_dir = claim_run_dir(tmp_path, "new")
    with pytest.raises(ValueError, match="bad data"), preparing() as prep:
        prep.run_dir, prep.tracker = run_dir, new
        raise ValueError("bad data")
    assert new.status == "FAILED" and not run_dir.exists()
    _, kept = claim_run_dir(tmp_path, "resumed")
    with pytest.raises(ValueError), preparing() as prep:  # a resumed run: its folder is not the driver's to remove
        prep.tracker = resumed
        raise ValueError("bad data")
    assert resumed.status == "FAILED" and kept.exists()
    with pytest.raises(KeyboardInterrupt), preparing() as prep:
        prep.tracker = interrupted
        raise KeyboardInterrupt
    assert interrupted.status == "KILLED"
    with pytest.raises(ValueError, match="the real error"), preparing() as prep:  # not hidden by the server's
        prep.tracker = unreachable
        raise ValueError("the real error")
