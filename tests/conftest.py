"""Shared fixtures: a tiny synthetic dataset generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssl_core.data.synthetic import generate


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a 4-class x 4-video synthetic dataset (16 frames, 64 px): manifest.csv, classes.txt, mp4s."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, classes=4, videos_per_class=4, seed=0, frames=16, size=64, fps=16)
    return root
