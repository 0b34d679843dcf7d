"""The smallest real runs the Ray end-to-end tests share (tests/e2e, tests/slow): config paths, the overrides of
a tiny run on an encoded synthetic set, and a workflow spec file around them.

    .venv/bin/python -m pytest -q tests/e2e/test_engine_adapters.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ssl_core.data import synthetic

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
PRETRAIN = ROOT / "configs" / "pretrain_demo.yaml"


def tiny_run(dataset: Path, tmp: Path) -> list[str]:
    """Overrides for a tiny run on `dataset` whose store, runs and clip cache all live under `tmp`."""
    return [f"data.root={dataset}", "data.synthetic.enabled=false", "data.labeled_fraction=0.5", "data.num_frames=4",
            "data.size=40", "data.eval_clips=1", "augment.crop_size=32", "model.primary=small3d_w0.25",
            "train.warmup_iters=1", f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"output.storage={tmp}/runs",
            f"data.cache_dir={tmp}/cache"]


def workflow_spec(tmp: Path, seed: int, sets: list[str], section: str, body: dict[str, Any]) -> Path:
    """Encodes a 3-class synthetic set under tmp/synth and writes tmp/<section>.yaml: demo.yaml with 4-step runs
    on it two at a time, then `sets`, and the workflow's own `section`."""
    root = tmp / "synth"
    synthetic.generate(root, classes=3, videos_per_class=6, seed=seed, frames=16, size=48)
    spec_file = tmp / f"{section}.yaml"
    spec_file.write_text(yaml.safe_dump({
        "base": str(DEMO),
        "set": [
            f"data.root={root}", "data.synthetic.enabled=false", "data.num_frames=4", "data.size=40",
            # two runs at a time on 2 CPUs (auto concurrency: 1 worker x 0.5 CPU + a 0.25 CPU decode task)
            "scaling.cpus_per_worker=0.5", "data.decode_cpus=0.25",
            "data.eval_clips=1", "augment.crop_size=32", "train.iterations=4", "train.batch_size=2",
            "train.log_every=2", "train.checkpoint_every=2", "train.warmup_iters=1",
            f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"output.storage={tmp}/runs", *sets,
        ],
        section: body,
    }))
    return spec_file
