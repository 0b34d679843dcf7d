"""The `vidssl` command calls the same code as the modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflows.cli import main


def test_list_algorithms_shows_params(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "algorithms"]) == 0
    out = capsys.readouterr().out
    for name in ("supervised", "fixmatch", "cmpl"):
        assert name in out
    assert "tau=0.95" in out


def test_list_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    for name in ("small3d", "r3d_18", "r3d_50"):
        assert name in out


def test_synth_writes_videos_and_manifest(tmp_path: Path) -> None:
    out = tmp_path / "s"
    assert main(["synth", "--out", str(out), "--classes", "2", "--videos-per-class", "2", "--frames", "8",
                 "--size", "32"]) == 0
    assert len(list(out.glob("*/*.mp4"))) == 4
    assert (out / "manifest.csv").read_text().startswith("path,label,split")


def test_workflow_subcommands_reach_their_modules(capsys: pytest.CaptureFixture[str]) -> None:
    config = str(Path(__file__).resolve().parents[2] / "configs" / "noisy_student_demo.yaml")
    assert main(["noisy-student", "--config", config, "--dry-run"]) == 0
    assert "round-2-student: noisy_student_offline small3d" in capsys.readouterr().out
    for command in ("distill", "label-queue", "sweep", "predict"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: " in capsys.readouterr().out
