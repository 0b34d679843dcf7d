"""Shared fixtures: a tiny synthetic dataset generated once per test session; Ray in-process per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from ssl_core.data.synthetic import generate


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a 4-class x 4-video synthetic dataset (16 frames, 64 px): manifest.csv, classes.txt, mp4s."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, classes=4, videos_per_class=4, seed=0, frames=16, size=64, fps=16)
    return root


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """Ray started in this process on 2 CPUs (the CI machine's size) for one test module."""
    ray.init(num_cpus=2, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()
