"""The pure helpers of bench.train_throughput on given numbers (no timing, no Ray, no models)."""

from __future__ import annotations

import pytest

from bench.train_throughput import (
    Case,
    Stat,
    aggregate_rate,
    build_cases,
    headline,
    iterations_for,
    sandwich_ratios,
    schedule,
    summarize,
    timed_windows,
    wall_rate,
)


def test_iterations_leave_a_one_step_final_window() -> None:
    # warm-up window + 3 timed windows of 10 + the 1-step window that holds the last-step eval
    assert iterations_for(10, 3) == 41


def test_summarize_gives_median_min_max() -> None:
    assert summarize([3.0, 1.0, 2.0]) == Stat(2.0, 1.0, 3.0)
    assert summarize([2.0, 4.0]) == Stat(3.0, 2.0, 4.0)
    with pytest.raises(ValueError):
        summarize([])


def test_aggregate_rate_is_total_clips_over_total_time() -> None:
    # windows of 120 clips at 60 and 30 clips/s: 240 clips in 2 + 4 s
    assert aggregate_rate([60.0, 30.0]) == pytest.approx(240 / 6)
    with pytest.raises(ValueError):
        aggregate_rate([10.0, 0.0])


def test_timed_windows_drop_warm_up_and_final_window() -> None:
    history = [(41, 99.0), (10, 5.0), (20, 40.0), (30, 42.0), (40, 44.0)]
    assert timed_windows(history, log_every=10, iterations=41) == [40.0, 42.0, 44.0]
    with pytest.raises(ValueError, match="unexpected log windows"):
        timed_windows([(10, 5.0), (30, 42.0), (41, 1.0)], log_every=10, iterations=41)


def test_wall_rate_counts_the_windows_between_first_and_last_stamp() -> None:
    # warm-up end at t=1 s, then 2 windows of 120 clips ending at 4 s and 7 s
    assert wall_rate([1000, 4000, 7000], clips_per_window=120) == pytest.approx(240 / 6)
    with pytest.raises(ValueError):
        wall_rate([1000], clips_per_window=120)


def test_schedule_sandwiches_every_fit_between_plain_runs() -> None:
    assert schedule(1) == ["plain", "ray", "plain"]
    assert schedule(2) == ["plain", "ray", "plain", "ray", "plain"]


def test_sandwich_ratios_use_the_neighbouring_plain_runs() -> None:
    assert sandwich_ratios([40.0, 60.0, 30.0], [45.0, 36.0]) == pytest.approx([0.9, 0.8])
    with pytest.raises(ValueError):
        sandwich_ratios([40.0, 60.0], [45.0, 36.0])


def test_headline_is_the_worst_pair() -> None:
    assert headline({"a": Stat(0.95, 0.9, 1.0), "b": Stat(0.85, 0.8, 0.9)}) == 0.85
    with pytest.raises(ValueError):
        headline({})


def test_build_cases_presets_quick_and_overrides() -> None:
    small, r3d = build_cases(["small3d,small3d_w0.5", "r3d_50,r3d_50_w0.25"], quick=False, overrides={})
    assert (small.batch, small.mu, small.frames, small.size, small.crop) == (8, 2, 8, 72, 64)  # configs/demo.yaml
    assert (r3d.batch, r3d.mu) == (2, 1)
    assert small.clips_per_step == 24
    (quick,) = build_cases(["small3d,small3d_w0.5"], quick=True, overrides={"batch": 4, "mu": None})
    assert (quick.batch, quick.mu, quick.log_every, quick.windows) == (4, 2, 4, 2)
    assert isinstance(quick, Case) and quick.iterations == 13
    with pytest.raises(SystemExit):
        build_cases(["small3d"], quick=False, overrides={})
