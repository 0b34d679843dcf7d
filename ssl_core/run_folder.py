"""A new run folder that is never another run's: `<storage>/<name>`, or `<name>-2`, `-3`, ... when taken.

Used by every entry point that starts a run (workflows.train, workflows.pretrain, python -m ssl_core.pretrain):
the folder is claimed with an exclusive mkdir, so two runs started in the same second (their default names
carry a timestamp to the second) or with the same tracking.run_name get different folders, and no run writes
into another's checkpoints or split file.
"""

from __future__ import annotations

import time
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
