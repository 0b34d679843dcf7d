"""bench.iteration_rate end to end on a tiny generated set: both cache arms run the same steps, rows are written.

    .venv/bin/python -m pytest -q tests/unit/test_iteration_rate_bench.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import iteration_rate


def test_each_method_runs_both_arms_and_reports_the_ratio(
    synth_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(iteration_rate, "OUT", tmp_path)
    sets = [f"data.root={synth_dataset}", "data.synthetic.enabled=false", "data.num_frames=4", "data.size=40",
            "augment.crop_size=32", "train.batch_size=2", "train.mu=1", "model.primary=small3d_w0.5",
            "model.auxiliary=small3d_w0.5", f"data.cache_dir={tmp_path / 'cache'}"]
    iteration_rate.main(["--steps", "3", "--methods", "supervised,cmpl", *(a for s in sets for a in ("--set", s))])
    rows = json.loads((tmp_path / "iteration_rate.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["supervised", "cmpl"]
    for row in rows:
        assert row["it_per_min_off"] > 0 and row["it_per_min_on"] > 0
        assert row["ratio"] == pytest.approx(row["it_per_min_on"] / row["it_per_min_off"])
    assert "cmpl: it_per_min_off=" in capsys.readouterr().out


def test_compare_times_any_setting_at_two_values(
    synth_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(iteration_rate, "OUT", tmp_path)
    sets = [f"data.root={synth_dataset}", "data.synthetic.enabled=false", "data.num_frames=4", "data.size=40",
            "augment.crop_size=32", "train.batch_size=2", "model.primary=small3d_w0.5",
            f"data.cache_dir={tmp_path / 'cache'}"]
    threads = torch.get_num_threads()
    iteration_rate.main(["--steps", "2", "--methods", "supervised", "--compare", "scaling.torch_threads=1,2",
                         *(a for s in sets for a in ("--set", s))])
    (row,) = json.loads((tmp_path / "iteration_rate.json").read_text())["rows"]
    assert row["compare"] == "scaling.torch_threads" and row["it_per_min_1"] > 0 and row["it_per_min_2"] > 0
    assert torch.get_num_threads() == threads  # the caller's setting is back
    with pytest.raises(SystemExit):
        iteration_rate.main(["--compare", "data.cache=on"])
