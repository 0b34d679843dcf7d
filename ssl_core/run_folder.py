"""A new run folder that is never another run's: `<storage>/<name>`, or `<name>-2`, `-3`, ... when taken.

Used by every entry point that starts a run (workflows.train, workflows.pretrain, python -m ssl_core.loop,
python -m ssl_core.pretrain):
the folder is claimed with an exclusive mkdir, so two runs started in the same second (their default names
carry a timestamp to the second) or with the same tracking.run_name get different folders, and no run writes
into another's checkpoints or split file.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def stamped(prefix: str) -> str:
    """`<prefix>-<YYYYmmdd-HHMMSS>`: the default run name."""
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def claim_run_dir(storage: str | Path, name: str) -> tuple[str, Path]:
    """Create and return (name, folder) for the first of name, name-2, name-3, ... not yet under `storage`."""
    root = Path(storage).resolve()
    root.mkdir(parents=True, exist_ok=True)
    candidate, k = name, 1
    while True:
        try:
            (root / candidate).mkdir()
            return candidate, root / candidate
        except FileExistsError:
            k += 1
            candidate = f"{name}-{k}"


@contextmanager
def discarded_on_failure(run_dir: Path) -> Iterator[None]:
    """For a run folder this process has just claimed: when what runs inside raises an error before the run saved a
    checkpoint, the folder is removed. It holds only what the run wrote (its config, labeled split, log), and an
    empty run left behind would be listed, and found by `--resume latest`, as if it had trained. An interrupt
    (Ctrl-C) leaves the folder as it is."""
    try:
        yield
    except Exception:
        discard(run_dir)
        raise


def discard(run_dir: Path) -> None:
    """Remove a run folder that saved no checkpoint (see discarded_on_failure)."""
    if not any(run_dir.glob("checkpoint_*")):
        shutil.rmtree(run_dir, ignore_errors=True)
