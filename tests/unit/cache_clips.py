"""Clips and configs shared by the clip cache tests (tests/unit/test_clip_cache*.py): a painted video whose
frames show their index and a config whose run storage is the test's folder.

    .venv/bin/python -m pytest -q tests/unit/test_clip_cache.py tests/unit/test_clip_cache_integrity.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssl_core.config import Config, with_overrides
from tests.unit.odd_videos import write_video

SIZE = 24


def painted(path: Path, n: int, *, side: int = 40, width: int | None = None) -> str:
    """Frame k: a flat grey 20 + 7k (mod 230) with a moving bar (so crops and frame order both show)."""
    frames = np.zeros((n, side, width or side, 3), np.uint8)
    for k in range(n):
        frames[k] = (20 + 7 * k) % 230
        frames[k, :, (3 * k) % frames.shape[2]] = 255
    return str(write_video(path, frames))


def config(tmp_path: Path, *overrides: str) -> Config:
    return with_overrides({}, [f"output.storage={tmp_path / 'runs'}", f"data.size={SIZE}", "augment.crop_size=16",
                               *overrides])
