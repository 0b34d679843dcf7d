"""Config loading: overrides, validation errors that name the key path, the CLI's one-line error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ssl_core.config import ConfigError, load_config

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_demo_config_loads_with_algorithm_params() -> None:
    cfg = load_config(DEMO)
    assert cfg.algorithm.name == "cmpl"
    params = cfg.algorithm.resolved_params()
    assert (params.tau, params.lambda_u) == (0.95, 1.0)
    assert cfg.augment.hflip is False


def test_overrides_are_parsed_as_yaml_values() -> None:
    cfg = load_config(DEMO, ["algorithm.tau=0.7", "train.iterations=12", "augment.hflip=true"])
    assert cfg.algorithm.resolved_params().tau == 0.7
    assert cfg.train.iterations == 12
    assert cfg.augment.hflip is True


def test_switching_algorithm_keeps_shared_keys_valid() -> None:
    cfg = load_config(DEMO, ["algorithm.name=supervised"])
    assert cfg.algorithm.resolved_params().__class__.__name__.lower().startswith("supervised")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("algorithm.tau=1.5", "algorithm.tau"),
        ("algorithm.tau=-0.1", "algorithm.tau"),
        ("data.labeled_fraction=0", "data.labeled_fraction"),
        ("data.labeled_fraction=1.2", "data.labeled_fraction"),
        ("train.mu=0", "train.mu"),
        ("train.lr=fast", "train.lr"),
        ("train.iterations=2.5", "train.iterations"),
        ("train.unknown_knob=1", "train.unknown_knob"),
        ("algorithm.bogus=1", "algorithm.bogus"),
        ("algorithm.name=nope", "algorithm.name"),
        ("model.primary=resnet9000", "model.primary"),
        ("augment.crop_size=500", "augment.crop_size"),
        ("data.layout=zip", "data.layout"),
        ("scaling.max_failures=-2", "scaling.max_failures"),
    ],
)
def test_bad_values_name_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    assert str(err.value).startswith(key), str(err.value)


def test_cli_reports_one_line_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "workflows.train", "--config", str(DEMO), "--set", "algorithm.tau=2"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: algorithm.tau: must be in [0, 1], got 2.0"], proc.stderr
