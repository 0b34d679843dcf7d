"""Connect to the Ray cluster a job was submitted to, or start Ray in this process.

Light on purpose (no torch, no model zoo): every workflow driver calls `init_ray()` first, e.g.
    python -m workflows.reencode --config configs/prepare_demo.yaml
What Ray and its workers print goes to the console only with --verbose (workflows/console/terminal.py).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from workflows.console import terminal


def init_ray(min_cpus: float = 0) -> None:
    """`min_cpus`: the logical CPUs an in-process Ray start declares at the least (more than this machine's
    cores when a run needs them, see workflows.runtime.training.logical_cpus); ignored when joining a cluster."""
    # here: Ray takes a second or more to load, and this module stays light (see above)
    import ray
    import ray.data  # configures its logger on import: before terminal.adopt_library_loggers

    if not ray.is_initialized():
        kwargs = {}
        # RAY_ADDRESS (set by `ray job submit`) connects to the cluster; otherwise Ray starts in-process.
        if not os.environ.get("RAY_ADDRESS"):
            if min_cpus > (os.cpu_count() or 1):
                kwargs["num_cpus"] = math.ceil(min_cpus)
            # One node of fixed size, so Ray Data's cluster autoscaler has nothing to scale up; yet a busy
            # Dataset's scale-up request is served first from the node's CPUs, before the rest is shared among
            # the running Datasets, and can leave another training stream none (the starvation described in
            # workflows.runtime.training.logical_cpus). Utilization thresholds above 100 % stop those requests; the
            # workers Ray starts inherit them.
            for resource in ("CPU", "GPU", "MEMORY", "OBJECT_STORE_MEMORY"):
                os.environ.setdefault(f"RAY_DATA_DEFAULT_CLUSTER_SCALING_UP_{resource}_UTIL_THRESHOLD", "2")
        quiet = not terminal.verbose()
        # Quiet: the "ray" logger's records go to the log file (terminal.adopt_library_loggers) instead of Ray's
        # console handler, from ray.init's own messages on.
        terminal.adopt_library_loggers()
        ray.init(logging_level=logging.WARNING, configure_logging=not quiet, **kwargs)
        terminal.ray_started()
    terminal.adopt_library_loggers()
    terminal.route_worker_output()
    if not terminal.verbose():
        # Datasets executed by this driver (evaluate, predict, prepare, ...): one overall bar, not one per operator.
        ray.data.DataContext.get_current().enable_operator_progress_bars = False


def on_driver_node() -> dict[str, Any]:
    """Actor options that keep a driver-owned actor (skip counter, progress channel) on the driver's node, as
    Ray Train keeps its controller there: a lost worker node must not take the run's bookkeeping with it."""
    # here: as in init_ray
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)}
