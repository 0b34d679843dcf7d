"""Config loading: overrides, validation errors that name the key path, the CLI's one-line error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ssl_core.config import ConfigError, load_config

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def test_demo_config_loads_with_algorithm_params() -> None:
    cfg = load_config(DEMO)
    assert cfg.algorithm.name == "cmpl"
    params = cfg.algorithm.resolved_params()
    assert (params.tau, params.lambda_u, params.ema_teacher) == (0.8, 1.0, True)
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
        ("scaling.placement_strategy=spread", "scaling.placement_strategy"),
        ("data.cache=sometimes", "data.cache"),
        ("data.cache_budget_gb=0", "data.cache_budget_gb"),
        ("data.cache_dir=''", "data.cache_dir"),
        ("data.synthetic.classes=1", "data.synthetic.classes"),
        ("augment.placement=gpu", "augment.placement"),
        ("algorithm.name=distill", "model.teacher"),  # a check across two sections
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


def test_clip_cache_keys_default_parse_yaml_on_off_and_pin_to_absolute_paths() -> None:
    from ssl_core.config import pin_paths

    cfg = load_config(DEMO)
    assert (cfg.data.cache, cfg.data.cache_budget_gb, cfg.data.cache_dir) == ("auto", 4.0, None)
    # YAML 1.1 reads bare on / off as booleans: they still mean the modes.
    assert load_config(DEMO, ["data.cache=off"]).data.cache == "off"
    assert load_config(DEMO, ["data.cache=on", "data.cache_budget_gb=0.5"]).data.cache == "on"
    raw = load_config(DEMO, ["data.cache_dir=rel/cache"]).to_dict()
    pinned = pin_paths(raw, "sqlite:///x.db")
    assert pinned["data"]["cache_dir"] == str(Path("rel/cache").resolve())
    assert pin_paths(cfg.to_dict(), "sqlite:///x.db")["data"]["cache_dir"] is None


def test_per_algorithm_sections_keep_each_methods_values_apart() -> None:
    cfg = load_config(None, ["algorithm.name=fixmatch", "algorithm.fixmatch.lambda_u=2.0",
                             "algorithm.mixmatch.lambda_u=10.0", "algorithm.cmpl.tau=0.7"])
    assert cfg.algorithm.resolved_params().lambda_u == 2.0 and cfg.algorithm.resolved_params().tau == 0.95
    from ssl_core.config import with_overrides

    mixmatch = with_overrides(cfg.to_dict(), ["algorithm.name=mixmatch"]).algorithm.resolved_params()
    assert mixmatch.lambda_u == 10.0  # fixmatch's 2.0 does not reach it
    # a flat key is the chosen algorithm's and wins over its section (the form of --set and sweeps)
    flat = with_overrides(cfg.to_dict(), ["algorithm.lambda_u=3.0", "algorithm.fixmatch.tau=0.8"])
    assert (flat.algorithm.resolved_params().lambda_u, flat.algorithm.resolved_params().tau) == (3.0, 0.8)
    assert flat.algorithm.sections["fixmatch"] == {"lambda_u": 2.0, "tau": 0.8}  # merged, not replaced


@pytest.mark.parametrize(("override", "message"), [
    ("algorithm.fixmatch.alpha=1", "algorithm.fixmatch.alpha: fixmatch has no such hyper-parameter"),
    ("algorithm.mixmatch.lambda_u=-1", "algorithm.mixmatch"),  # checked although cmpl is the chosen one
    ("algorithm.fixmatch=3", "algorithm.fixmatch: expected a mapping"),
])
def test_bad_algorithm_sections_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
