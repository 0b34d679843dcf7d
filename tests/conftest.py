"""Shared fixtures: a tiny synthetic dataset generated once per test session; Ray in-process per module."""

from __future__ import annotations

import os
import sys
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


_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave with pytest's own status, without the interpreter's teardown: once, in a fresh clone, that teardown
    crashed (exit 139, a native thread of Ray / gRPC or PyAV) after every test had passed and the summary was out."""
    if _exit_status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status[-1])
