"""bench.gpu_step and bench.augment_speed run end to end on the CPU (tiny models and clips): every configuration
and algorithm gives a rate, the profiled one its top kernels, the augmentation contest both contestants.

    pytest tests/unit/test_gpu_step_bench.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import augment_speed, gpu_step


def test_gpu_step_measures_every_configuration_and_profiles_one_algorithm(tmp_path: Path) -> None:
    out = tmp_path / "gpu_step.json"
    gpu_step.main([
        "--device", "cpu", "--configs", "baseline,+batched_augment,all", "--algorithms", "supervised,fixmatch",
        "--models", "small3d,small3d_w0.5", "--size", "24", "--crop", "16", "--frames", "2", "--batch", "2",
        "--mu", "1", "--classes", "3", "--warmup", "1", "--steps", "1", "--out", str(out),
    ])
    report = json.loads(out.read_text())
    assert report["torch"] and report["device"] == "cpu"
    rows = {(r["config"], r["algorithm"]): r for r in report["results"]}
    assert set(rows) == {(c, a) for c in ("baseline", "+batched_augment", "all") for a in ("supervised", "fixmatch")}
    assert all(r["clips_per_s"] > 0 and r["tflop_per_step"] > 0 for r in rows.values())
    assert rows[("baseline", "fixmatch")]["batched_augment"] is False
    assert rows[("all", "fixmatch")]["weak_no_grad"] is True
    # Forward-only weak views: fewer FLOPs than the joint forward's backward over them.
    assert rows[("all", "fixmatch")]["tflop_per_step"] < rows[("baseline", "fixmatch")]["tflop_per_step"]
    kernels = rows[("all", "fixmatch")]["top_kernels"]
    assert 0 < len(kernels) <= 10 and all(0 < share <= 1 for _, share in kernels)
    assert "top_kernels" not in rows[("all", "supervised")]


def test_augment_speed_times_both_contestants() -> None:
    r = augment_speed.compare(batch=2, mu=1, frames=2, size=24, crop=16, device=augment_speed.torch.device("cpu"),
                              steps=1, repeats=1)
    assert r["per_clip_ms"] > 0 and r["batched_ms"] > 0 and r["speedup"] > 0


def test_the_step_code_imports_without_pyav_ray_or_mlflow() -> None:
    """A GPU machine may have torch but not PyAV, Ray or MLflow: bench.gpu_step must import there."""
    code = ("import sys\nfor m in ('av', 'ray', 'mlflow', 'torchcodec'):\n    sys.modules[m] = None\n"
            "import bench.gpu_step, ssl_core.loop\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
