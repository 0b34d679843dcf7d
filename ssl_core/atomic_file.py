"""Text files written whole or not at all: a temporary file beside the target, renamed over it, so a crash or a
killed job never leaves half a record, split or manifest that a later run would trust.

    python -c "from pathlib import Path; from ssl_core.atomic_file import write_text_atomic; \
write_text_atomic(Path('/tmp/x.json'), '{}')"
"""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """`text` into `path` through `<path>.tmp` and an atomic rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
