"""bench.accuracy's table and its guard against mixing budgets (the runs themselves are the workflow's e2e tests).

    pytest tests/unit/test_bench_accuracy.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.accuracy import BenchSpec, main, summarise, write_report


def row(method: str, fraction: float, seed: int, top1: float, mask: float = math.nan, acc: float = math.nan) -> dict:
    return {"method": method, "fraction": fraction, "seed": seed, "top1": top1, "top5": 1.0,
            "mask_rate": mask, "pseudo_accuracy": acc, "wall_s": 60.0}


ROWS = [
    row("supervised", 0.05, 0, 0.20), row("supervised", 0.05, 1, 0.30),
    row("fixmatch", 0.05, 0, 0.40, mask=0.5, acc=0.9), row("fixmatch", 0.05, 1, 0.44, mask=0.7, acc=0.7),
    row("fixmatch", 0.2, 0, 0.60, mask=0.9, acc=1.0),
]


def test_summarise_gives_mean_and_sample_std_per_fraction_and_dashes_where_nothing_ran() -> None:
    table = summarise(ROWS, ["supervised", "fixmatch"], [0.05, 0.2])
    # supervised at 5%: mean 25.0, sample std of (20, 30) = sqrt(50) = 7.07; no SSL diagnostics
    assert table[0] == ["supervised", "25.0 ± 7.1 (n=2)", "—", "—", "—"]
    # fixmatch: (40, 44) -> 42.0 ± 2.83; one run at 20%; mask (50, 70, 90) -> 70.0; accuracy (90, 70, 100) -> 86.7
    assert table[1] == ["fixmatch", "42.0 ± 2.8 (n=2)", "60.0 ± 0.0 (n=1)", "70.0", "86.7"]


def test_report_keeps_the_hand_written_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = BenchSpec({"tracking": {"experiment": "e"}}, ["supervised", "fixmatch"], [0.05, 0.2], [0, 1])
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text("old table\n## Reading\n\nwhat the numbers mean\n")
    out = write_report(spec, ROWS, "python -m bench.accuracy --config x", 300.0)
    text = out.read_text()
    assert "old table" not in text and "| fixmatch | 42.0 ± 2.8 (n=2) |" in text
    assert text.endswith("## Reading\n\nwhat the numbers mean\n")
    assert (tmp_path / "docs" / "results_top1.png").stat().st_size > 0


def test_a_different_budget_does_not_continue_a_stored_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = tmp_path / "runs"
    storage.mkdir()
    stored = {"rows": ROWS, "parent": "0" * 32, "overrides": ["train.iterations=300"]}
    before = json.dumps(stored)
    (storage / "results.json").write_text(before)
    config = tmp_path / "bench.yaml"
    config.write_text(f"base:\n  output: {{storage: {storage}}}\nmethods: [supervised]\n"
                      "labeled_fractions: [0.05]\nseeds: [0]\n")
    assert main(["--config", str(config), "--set", "train.iterations=200"]) == 2
    err = capsys.readouterr().err
    assert "results.json" in err and "train.iterations=300" in err
    assert (storage / "results.json").read_text() == before  # untouched


def test_variants_are_rows_whose_overrides_win(tmp_path: Path) -> None:
    import argparse

    from bench.accuracy import load_grid

    config = tmp_path / "bench.yaml"
    config.write_text(
        "base: {algorithm: {name: cmpl}}\nmethods: [supervised, supervised_all, cmpl_no_ema]\n"
        "labeled_fractions: [0.05]\nseeds: [3]\nvariants:\n"
        "  supervised_all: [algorithm.name=supervised, data.labeled_fraction=1.0]\n"
        "  cmpl_no_ema: [algorithm.name=cmpl, train.ema_decay=0.0, algorithm.cmpl.ema_teacher=false]\n")
    args = argparse.Namespace(config=str(config), set=["train.ema_decay=0.99"], methods=None)
    spec, chosen, configs = load_grid(args)
    ceiling = configs[("supervised_all", 0.05, 3)]
    assert ceiling.algorithm.name == "supervised" and ceiling.data.labeled_fraction == 1.0
    assert ceiling.tracking.run_name == "supervised_all-f0.05-s3" and ceiling.train.seed == 3
    ablated = configs[("cmpl_no_ema", 0.05, 3)]
    assert ablated.train.ema_decay == 0.0 and not ablated.algorithm.resolved_params().ema_teacher
    assert configs[("supervised", 0.05, 3)].train.ema_decay == 0.99
    config.write_text("base: {}\nmethods: [x]\nlabeled_fractions: [0.05]\nseeds: [0]\nvariants: {x: [train.seed=1]}\n")
    with pytest.raises(Exception, match="variants.x: must set algorithm.name"):
        load_grid(argparse.Namespace(config=str(config), set=[], methods=None))


def test_fractions_and_seeds_from_the_command_line_replace_the_files(tmp_path: Path) -> None:
    import argparse

    from bench.accuracy import load_grid

    config = tmp_path / "bench.yaml"
    config.write_text("base: {}\nmethods: [supervised]\nlabeled_fractions: [0.05, 0.1]\nseeds: [0, 1, 2]\n"
                      "variants: {supervised: [algorithm.name=supervised]}\n")
    args = argparse.Namespace(config=str(config), set=[], methods=None, fractions="0.2", seeds="4,5")
    _, _, configs = load_grid(args)
    assert sorted(configs) == [("supervised", 0.2, 4), ("supervised", 0.2, 5)]
    assert configs[("supervised", 0.2, 5)].data.labeled_fraction == 0.2
    with pytest.raises(Exception, match="--fractions / --seeds"):
        load_grid(argparse.Namespace(config=str(config), set=[], methods=None, fractions="a", seeds=None))
