"""Connect to the Ray cluster a job was submitted to, or start Ray in this process.

Light on purpose (no torch, no model zoo): every workflow driver calls `init_ray()` first, e.g.
    python -m workflows.prepare --config configs/prepare_demo.yaml
"""

from __future__ import annotations

import logging


def init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    # RAY_ADDRESS (set by `ray job submit`) connects to the cluster; otherwise Ray starts in-process.
    ray.init(logging_level=logging.WARNING)
