"""The Ray-free loop (ssl_core.loop.run_local) and the grid runner built on it (bench.accuracy_local).

    pytest tests/unit/test_local_loop.py
"""

from __future__ import annotations

import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from bench.accuracy_local import parse_result
from ssl_core.config import Config, load_config
from ssl_core.data.manifest import VideoRecord
from ssl_core.loop import _clip_batches, run_local

DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def small_config(root: Path, *overrides: str) -> Config:
    return load_config(DEMO, [
        f"data.root={root}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5",
        "data.num_frames=4", "data.size=40", "data.eval_clips=1", "augment.crop_size=32",
        "train.iterations=4", "train.batch_size=4", "train.mu=1", "train.log_every=3", "train.warmup_iters=1",
        "algorithm.tau=0.0", "algorithm.unsup_warmup=1", "algorithm.unsup_rampup=0", "train.ema_start=1", *overrides,
    ])


def test_run_local_trains_evaluates_both_cmpl_models_and_reports_the_last_window(
    synth_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_local(small_config(synth_dataset, "algorithm.name=cmpl", f"output.storage={tmp_path}"),
                       decode_threads=2)
    # data.cache = auto (the default): the small set fits, so its clips come from a cache under the storage.
    assert "clip cache: on, built" in capsys.readouterr().out
    assert len(list((tmp_path / ".clip_cache").glob("s40-*/frames.u8"))) == 1
    for role in ("primary", "auxiliary"):
        assert 0.0 <= result[f"top1_{role}"] <= result[f"top5_{role}"] <= 1.0
    # tau = 0: every unlabeled clip is pseudo-labeled, so the last window's mask rate is exactly 1.
    assert result["end/pseudo/mask_rate_primary"] == 1.0
    assert 0.0 <= result["end/pseudo/accuracy_primary"] <= 1.0
    assert math.isfinite(result["end/loss/total"]) and result["train_clips_per_s"] > 0


def test_clip_batches_skip_a_bad_video_and_are_seeded(synth_dataset: Path, tmp_path: Path) -> None:
    cfg = small_config(synth_dataset)
    videos = sorted(synth_dataset.rglob("*.mp4"))[:3]
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    records = [VideoRecord(str(v), i, "train") for i, v in enumerate(videos)] + [VideoRecord(str(bad), 9, "train")]
    with ThreadPoolExecutor(2) as pool:
        first = [next(_clip_batches(records, 3, cfg, 7, pool)) for _ in range(2)]
        batches = _clip_batches(records, 3, cfg, 7, pool)
        several = [next(batches) for _ in range(4)]
    assert torch.equal(first[0][0], first[1][0])  # same seed, same clips, whatever the thread timing
    for clips, labels in several:
        assert clips.shape == (3, 4, 40, 40, 3) and clips.dtype == torch.uint8
        assert 9 not in labels.tolist()  # the undecodable video never makes it into a batch


def test_parse_result_reads_the_final_key_value_lines() -> None:
    out = "step 3: loss/total=1.2 pseudo/mask_rate_primary=0.5\nend/pseudo/mask_rate_primary: 0.5000\n" \
          "top1_primary: 0.2500\nnote: not a number\n"
    assert parse_result(out) == {"end/pseudo/mask_rate_primary": 0.5, "top1_primary": 0.25}


def test_accuracy_local_runs_the_grid_and_prints_the_table(
    synth_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.accuracy_local import main

    root = tmp_path / "synth"
    shutil.copytree(synth_dataset, root)
    spec = tmp_path / "bench.yaml"
    spec.write_text(
        f"base:\n  data: {{root: {root}, num_frames: 4, size: 40, eval_clips: 1, synthetic: {{enabled: false}}}}\n"
        "  augment: {crop_size: 32}\n"
        "  train: {iterations: 2, batch_size: 4, mu: 1, log_every: 2, warmup_iters: 1}\n"
        "  model: {primary: small3d_w0.25, auxiliary: small3d_w0.25}\n"
        f"  output: {{storage: {tmp_path / 'runs'}}}\n"  # the runs' clip cache goes there, not into ./runs
        "methods: [supervised, fixmatch]\nlabeled_fractions: [0.5]\nseeds: [0]\n"
    )
    assert main(["--config", str(spec), "--device", "cpu", "--parallel", "2", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 runs" in out
    assert "| supervised | " in out and "| fixmatch | " in out
    assert (tmp_path / "out" / "results.json").exists()


def test_the_runner_checkpoints_and_resume_latest_continues_the_step_and_the_optimizer(
    synth_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ssl_core.checkpoint import load_training_state
    from ssl_core.loop import main

    sets = [f"data.root={synth_dataset}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5",
            "data.num_frames=4", "data.size=40", "data.eval_clips=1", "augment.crop_size=32", "data.cache=off",
            "algorithm.name=supervised", "model.primary=small3d_w0.25", "train.batch_size=4", "train.log_every=1",
            "train.warmup_iters=1", "train.eval_every=100", "train.checkpoint_every=1", "train.keep_checkpoints=1",
            "tracking.run_name=local", f"output.storage={tmp_path}"]
    args = ["--config", str(DEMO), "--device", "cpu", *(a for s in sets for a in ("--set", s))]
    main([*args, "--set", "train.iterations=2"])
    first = capsys.readouterr().out
    run_dir = tmp_path / "local"
    assert f"run folder: {run_dir}" in first and "step 2: " in first and "top1_primary: " in first
    assert [p.name for p in run_dir.glob("checkpoint_*")] == ["checkpoint_000002"]  # keep_checkpoints = 1
    at_2 = load_training_state(run_dir / "checkpoint_000002")
    assert at_2["step"] == 2 and at_2["scheduler"]["last_epoch"] == 2

    main([*args, "--set", "train.iterations=4", "--resume", "latest"])
    second = capsys.readouterr().out
    assert f"resumed from {run_dir / 'checkpoint_000002'} at step 2" in second
    assert "step 3: " in second and "step 4: " in second and "step 1: " not in second and "step 2: " not in second
    assert [p.name for p in run_dir.glob("checkpoint_*")] == ["checkpoint_000004"]
    at_4 = load_training_state(run_dir / "checkpoint_000004")
    assert at_4["step"] == 4 and at_4["scheduler"]["last_epoch"] == 4
    # AdamW counts its steps per parameter: 4, not 2, only if the first run's optimizer state was restored
    assert {float(s["step"]) for s in at_4["optimizer"]["state"].values()} == {4.0}
    assert not torch.equal(at_4["models"]["primary"]["fc.weight"], at_2["models"]["primary"]["fc.weight"])
