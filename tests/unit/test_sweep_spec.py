"""Sweep files: parsing, validation naming the key, trial counts, the per-trial config (no Ray).

    .venv/bin/python -m pytest -q tests/unit/test_sweep_spec.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ssl_core.config import ConfigError, pin_paths
from workflows.specs.sweep import load_sweep, trial_config
from workflows.sweep import main

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, sweep: dict, base: object = "configs/demo.yaml", sets: list[str] | None = None) -> Path:
    if isinstance(base, str):
        base = str(ROOT / base)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": base, "set": sets or [], "sweep": sweep}))
    return path


def test_demo_sweep_parses_to_a_16_trial_grid() -> None:
    spec = load_sweep(ROOT / "configs" / "sweep_demo.yaml")
    assert spec.search == "grid" and spec.num_trials() == 16
    assert [d.key for d in spec.space] == ["algorithm.name", "algorithm.tau", "algorithm.lambda_u",
                                           "data.labeled_fraction"]
    points = spec.grid()
    assert len(points) == 16 and len({tuple(p.values()) for p in points}) == 16
    assert spec.base_config.tracking.registered_model == "vidssl-sweep-demo-primary"


def test_counts_for_grid_repeats_and_random(tmp_path: Path) -> None:
    grid = load_sweep(write(tmp_path, {"search": "grid", "num_samples": 3,
                                       "space": {"algorithm.tau": [0.5, 0.9], "algorithm.name": ["fixmatch"]}}))
    assert grid.num_trials() == 6
    rnd = load_sweep(write(tmp_path, {"search": "random", "num_samples": 5,
                                      "space": {"algorithm.tau": {"uniform": [0.6, 0.99]},
                                                "algorithm.lambda_u": {"loguniform": [0.1, 10]},
                                                "algorithm.name": ["fixmatch", "cmpl"]}}))
    assert rnd.num_trials() == 5
    assert "algorithm.tau: uniform(0.6, 0.99)" in rnd.describe()


@pytest.mark.parametrize(("sweep", "message"), [
    ({"space": {"algorithm.tauu": [0.5]}}, "sweep.space.algorithm.tauu"),
    ({"space": {"algorithm.tau": [1.5]}}, "algorithm.tau: must be in [0, 1]"),
    ({"space": {"algorithm.name": ["nope"]}}, "unknown algorithm 'nope'"),
    ({"space": {"train.nope": [1]}}, "sweep.space.train.nope"),
    ({"space": {"algorithm.tau": {"uniform": [0.5, 0.9]}}}, "a grid search needs a list"),
    ({"search": "random", "space": {"algorithm.tau": {"normal": [0, 1]}}}, "unknown distribution 'normal'"),
    ({"search": "bayes", "space": {"algorithm.tau": [0.5]}}, "sweep.search"),
    ({"space": {"algorithm.tau": []}}, "empty list"),
    ({"space": {"algorithm.tau": [0.5]}, "metric": "loss/total"}, "sweep.metric"),
    ({"space": {"algorithm.tau": [0.5]}, "asha": {"grace": 3}}, "sweep.asha"),
    ({"space": {"algorithm.tau": [0.5]}, "num_samples": 0}, "sweep.num_samples"),
    ({"space": {"algorithm.tau": [0.5]}, "typo": 1}, "sweep.typo"),
    ({}, "sweep.space"),
])
def test_bad_sweep_files_name_the_key(tmp_path: Path, sweep: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_sweep(write(tmp_path, sweep))


def test_errors_in_the_sweep_file_name_it_and_its_sweep_section_is_required(tmp_path: Path) -> None:
    path = write(tmp_path, {"space": {"algorithm.tau": [0.5]}, "mode": "best"})
    with pytest.raises(ConfigError, match=re.escape(f"sweep.mode: must be max or min, got 'best' (in {path})")):
        load_sweep(path)
    path.write_text(yaml.safe_dump({"base": str(ROOT / "configs" / "demo.yaml")}))
    with pytest.raises(ConfigError, match="^sweep: required"):
        load_sweep(path)


def test_bad_base_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="base: config file not found"):
        load_sweep(write(tmp_path, {"space": {"algorithm.tau": [0.5]}}, base=str(tmp_path / "missing.yaml")))
    with pytest.raises(ConfigError, match="train.lr: must be > 0"):
        load_sweep(write(tmp_path, {"space": {"algorithm.tau": [0.5]}}, sets=["train.lr=0"]))
    with pytest.raises(ConfigError, match="tracking.registered_model"):
        load_sweep(write(tmp_path, {"space": {"algorithm.tau": [0.5]}}, sets=["tracking.registered_model=null"]))


def test_trial_config_applies_the_point_and_swaps_the_labeled_subset_kind() -> None:
    spec = load_sweep(ROOT / "configs" / "sweep_demo.yaml", ["data.labeled_fraction=null", "data.labeled_per_class=2"])
    cfg = trial_config(spec.base, {"algorithm.name": "fixmatch", "algorithm.tau": 0.8, "data.labeled_fraction": 0.3})
    assert cfg.algorithm.name == "fixmatch" and cfg.algorithm.params["tau"] == 0.8
    assert cfg.data.labeled_fraction == 0.3 and cfg.data.labeled_per_class is None
    cfg = trial_config(spec.base, {"data.labeled_per_class": 3})
    assert cfg.data.labeled_per_class == 3 and cfg.data.labeled_fraction is None


def test_a_sweep_chooses_svformer_and_its_own_keys_reach_it_only(tmp_path: Path) -> None:
    spec = load_sweep(write(tmp_path, {"space": {"algorithm.name": ["fixmatch", "svformer"],
                                                 "algorithm.mix_weight": [1.0, 2.0]}}))
    assert spec.num_trials() == 4
    svformer = trial_config(spec.base, {"algorithm.name": "svformer", "algorithm.mix_weight": 2.0})
    assert svformer.algorithm.resolved_params().mix_weight == 2.0
    fixmatch = trial_config(spec.base, {"algorithm.name": "fixmatch", "algorithm.mix_weight": 2.0})
    assert not hasattr(fixmatch.algorithm.resolved_params(), "mix_weight")


def test_a_swept_primary_brings_its_input_spec_and_auxiliary(tmp_path: Path) -> None:
    """Each trial resolves the defaults a training config takes from its primary (`vidssl list models`), not the
    base's: vit_s clips are 16 frames at stride 4, 224 px, its auxiliary vit_tiny. Keys the base sets stay."""
    base = {"data": {"root": "data/synth_sweep", "eval_clips": 1}, "train": {"iterations": 5}}
    spec = load_sweep(write(tmp_path, {"space": {"model.primary": ["small3d", "vit_s"]}}, base=base,
                            sets=["augment.hflip=false"]))
    small, vit = (trial_config(spec.base, point) for point in spec.grid())
    assert (small.data.num_frames, small.data.stride, small.data.size, small.augment.crop_size) == (8, 2, 72, 64)
    assert (vit.data.num_frames, vit.data.stride, vit.data.size, vit.augment.crop_size) == (16, 4, 224, 224)
    assert (small.model.auxiliary, vit.model.auxiliary) == ("small3d_w0.5", "vit_tiny")
    assert vit.data.eval_clips == 1 and vit.augment.hflip is False  # the base and its `set` still apply
    # What the trials start from, pinned for Tune's actors: the written base, its paths absolute (defaults too).
    pinned = pin_paths(spec.base, "sqlite:///x.db")
    assert pinned["data"]["root"] == str(Path("data/synth_sweep").resolve())
    assert pinned["output"]["storage"] == str(Path("runs").resolve())
    assert trial_config(pinned, spec.grid()[1]).data.num_frames == 16


def test_dry_run_prints_space_and_count_without_starting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(ROOT / "configs" / "sweep_demo.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "16 trials" in out and "trial 15:" in out and "ASHA on step" in out


def test_cli_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(write(tmp_path, {"space": {"algorithm.tauu": [0.5]}})), "--dry-run"]) == 2
    assert "error: sweep.space.algorithm.tauu" in capsys.readouterr().err
