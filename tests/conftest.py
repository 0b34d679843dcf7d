"""Shared fixtures (a tiny synthetic dataset generated once per test session; Ray in-process per module) and the
markers, which follow the folders: tests/e2e -> e2e, tests/slow -> e2e + slow, tests/zoo -> e2e + slow + zoo;
tests/unit carries none.

    make test-unit   # tests/unit
    make test        # -m "not slow": tests/unit + tests/e2e
    make test-slow   # -m "slow and not zoo": tests/slow
    make test-zoo    # -m zoo: tests/zoo
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch

from ssl_core.data.synthetic import generate


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a 4-class x 4-video synthetic dataset (16 frames, 64 px): manifest.csv, classes.txt, mp4s."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, classes=4, videos_per_class=4, seed=0, frames=16, size=64, fps=16)
    return root


# Set by ray_local and pytest_sessionfinish, read by pytest_unconfigure.
_session: dict[str, Any] = {"ray_started": False, "exit_status": None}


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """Ray started in this process on 2 CPUs (the CI machine's size) for one test module."""
    ray.init(num_cpus=2, logging_level="ERROR")
    _session["ray_started"] = True
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


FOLDER_MARKERS = {"unit": set(), "e2e": {"e2e"}, "slow": {"e2e", "slow"}, "zoo": {"e2e", "slow", "zoo"}}


@pytest.hookimpl(tryfirst=True)  # before -m deselects by these markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by its folder; a test whose own markers say another folder is a collection error, so that
    `-m "not slow"` and the folders always select the same tests."""
    root = Path(__file__).parent
    misplaced = []
    for item in items:
        folder = item.path.relative_to(root).parts[0]
        wanted = FOLDER_MARKERS.get(folder)
        if wanted is None:
            misplaced.append(f"{item.nodeid}: not under tests/unit, tests/e2e, tests/slow or tests/zoo")
            continue
        own = {m.name for m in item.iter_markers()} & {"e2e", "slow", "zoo"}
        if own - wanted:
            misplaced.append(f"{item.nodeid}: marked {sorted(own - wanted)}, which tests/{folder} does not hold")
        for name in sorted(wanted - own):
            item.add_marker(name)
    if misplaced:
        raise pytest.UsageError("tests in the wrong folder (move them, or drop the marker):\n" + "\n".join(misplaced))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _session["exit_status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A session that started Ray leaves with pytest's own status through os._exit, skipping the interpreter's
    teardown and exit()'s C++ static destructors; any other session (make test-unit) tears down normally.

    Once, in a fresh clone, that teardown crashed (exit 139) after a run whose tests had all passed. It did not
    recur in 4 runs of the e2e modules that start Ray, PyAV decodes and MLflow nor in 4 runs of a script doing the
    same, all under faulthandler, so the faulting frame is not known. What was measured (gdb, at Py_FinalizeEx,
    after ray.shutdown()): native threads of Ray's _raylet.so still running while the interpreter and then the
    static destructors free what they may touch: the GCS client's io_context (boost::asio epoll_reactor::run),
    worker.io, opencensus DeltaProducer::RunHarvesterLoop, gRPC's event_engine / timer_manager / grpc_global_timer.
    """
    if _session["ray_started"] and _session["exit_status"] is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_session["exit_status"])


@pytest.fixture(scope="module")
def torch_one_thread() -> Iterator[None]:
    """Torch on one thread for a module of tiny clips: a second thread gains them nothing, and on a busy 2-core
    machine OpenMP's waiting makes them many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
