"""bench.feature_labels: label spreading on hand-made feature graphs, and the table from real videos."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.feature_labels import label_spreading, main
from ssl_core.data.synthetic import generate
from ssl_core.models import build_model


def _clusters() -> tuple[torch.Tensor, torch.Tensor]:
    """Two tight groups of 6 unit vectors around orthogonal directions; rows 0-5 class 0, rows 6-11 class 1."""
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4)[:2]
    x = torch.cat([centres[c] + 0.05 * torch.randn(6, 4, generator=g) for c in (0, 1)])
    return F.normalize(x, dim=1), torch.tensor([0] * 6 + [1] * 6)


def test_one_label_per_cluster_labels_the_whole_cluster() -> None:
    x, y = _clusters()
    known = torch.zeros(12, dtype=torch.bool)
    known[[2, 9]] = True
    hidden = y.clone()
    hidden[~known] = 1 - hidden[~known]  # wrong labels where hidden: spreading must not read them
    assert torch.equal(label_spreading(x, hidden, known, 2, k=3), y)


def test_the_graph_not_the_label_count_decides() -> None:
    # Three labeled rows of class 0 in the first cluster, one of class 1 in the second: the second cluster still
    # goes to class 1, as its rows' neighbours are all there.
    x, y = _clusters()
    known = torch.zeros(12, dtype=torch.bool)
    known[[0, 1, 2, 11]] = True
    assert torch.equal(label_spreading(x, y, known, 2, k=3), y)


def test_a_row_per_split_from_real_videos_and_a_weights_file(synth_dataset: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    weights = tmp_path / "backbone.pt"
    torch.save(build_model("frame2d_w0.25", num_classes=3).state_dict(), weights)  # 3 classes: the head is refit
    rc = main(["--config", "configs/demo.yaml", "--init", str(weights), "--fractions", "0.25", "0.5", "--seeds", "0",
               *(a for kv in (f"data.root={synth_dataset}", "data.synthetic.enabled=false", "data.cache=off",
                              "model.primary=frame2d_w0.25", "data.size=40", "augment.crop_size=32",
                              "data.num_frames=4", "data.eval_clips=1") for a in ("--set", kv))])
    out = capsys.readouterr().out
    assert rc == 0 and "head re-initialised" in out
    rows = [line for line in out.splitlines() if line.startswith(("| 0.25 |", "| 0.5 |", "| mean |"))]
    assert len(rows) == 3 and all(len(r.split("|")) == 9 for r in rows)
    assert "| 0.5 | 0 | 8 |" in out  # half of the 16 train videos labeled


def test_an_unreadable_init_is_an_error_naming_the_flag(synth_dataset: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--config", "configs/demo.yaml", "--init", str(tmp_path / "none"), "--set", f"data.root={synth_dataset}",
               "--set", "data.synthetic.enabled=false", "--set", "data.cache=off"])
    assert rc == 2 and "--init: no such file or directory" in capsys.readouterr().err


def test_an_unreadable_video_is_an_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate(tmp_path, classes=2, videos_per_class=4, frames=16, size=32)
    (tmp_path / "bad.mp4").write_bytes(b"")
    with (tmp_path / "manifest.csv").open("a") as f:
        f.write("bad.mp4,move_left,train\n")
    weights = tmp_path / "backbone.pt"
    torch.save(build_model("frame2d_w0.25", num_classes=2).state_dict(), weights)
    rc = main(["--config", "configs/demo.yaml", "--init", str(weights), "--fractions", "0.5", "--seeds", "0",
               *(a for kv in (f"data.root={tmp_path}", "data.synthetic.enabled=false", "data.cache=off",
                              "model.primary=frame2d_w0.25", "data.size=24", "augment.crop_size=16",
                              "data.num_frames=4", "data.eval_clips=1") for a in ("--set", kv))])
    assert rc == 2 and "bad.mp4" in capsys.readouterr().err
