"""ssl_core.run_folder: a new run never gets another run's folder.

    .venv/bin/python -m pytest -q tests/unit/test_run_folder.py
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
