"""An MLflow tracking server that cannot be reached when a run starts: one line, exit 2, nothing prepared
(docs/reliability.md). The failures injected mid-run are tests/slow/test_reliability.py.

    .venv/bin/python -m pytest -q tests/e2e/test_tracking_unreachable.py
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from workflows.train import main

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracking_server_fails_in_one_line_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    code = main(["--config", str(DEMO), "--set", f"tracking.uri={uri}", "--set", f"output.storage={tmp_path}/runs"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith(f"error: MLflow tracking server {uri} is unreachable: ") and "\n" not in err, err
    assert not (tmp_path / "runs").exists()  # nothing was prepared or started
