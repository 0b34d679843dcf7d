"""The transfer benchmark's pseudo-label trajectory, read from run logs.

    pytest tests/unit/test_transfer_trajectory.py
"""

from __future__ import annotations

from pathlib import Path

from bench.transfer import trajectory, trajectory_lines

LOG = """run folder: /x
step 50: grad_norm=1.0 loss/total=1.0 unsup_weight=0.000
step 100: grad_norm=1.0 pseudo/accuracy_primary=0.358 pseudo/mask_rate_primary=0.396 unsup_weight=0.255
step 110: grad_norm=1.0 pseudo/accuracy_primary=0.400 pseudo/mask_rate_primary=0.300
step 150: grad_norm=1.0 pseudo/accuracy_auxiliary=0.5 pseudo/accuracy_primary=0.610 pseudo/mask_rate_primary=0.306
top1_primary: 0.4190
"""


def test_trajectory_keeps_every_nth_step_that_has_both_values() -> None:
    assert trajectory(LOG, every=50) == [(100, 0.358, 0.396), (150, 0.61, 0.306)]
    assert trajectory(LOG, every=10) == [(100, 0.358, 0.396), (110, 0.4, 0.3), (150, 0.61, 0.306)]


def test_trajectory_lines_one_row_per_semi_supervised_log(tmp_path: Path) -> None:
    (tmp_path / "cmpl-f0.05-s0.log").write_text(LOG)
    (tmp_path / "supervised-f0.05-s0.log").write_text("step 50: grad_norm=1.0 loss/total=1.0\n")
    lines = trajectory_lines(tmp_path)
    assert lines[2:] == ["| cmpl-f0.05-s0 | 100: 36/40 150: 61/31 |"]
    assert trajectory_lines(tmp_path / "missing") == []
