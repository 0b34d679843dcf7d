"""The two-node rehearsal cluster (cluster/local.sh) end to end: a job submitted to it, and a node lost mid-run.

    VIDSSL_CLUSTER_TESTS=1 .venv/bin/python -m pytest -q -s tests/slow/test_cluster_e2e.py

Opt-in, minutes each (`make test-slow` and CI set VIDSSL_CLUSTER_TESTS=1). One cluster serves the module:
`local.sh up` with 2 logical CPUs per node, so that either node alone can hold both training workers, and
`down` at the end. Ports from VIDSSL_RAY_PORT / VIDSSL_DASHBOARD_PORT / VIDSSL_MLFLOW_PORT.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[2]
LOCAL_SH = REPO / "cluster" / "local.sh"
VENV = REPO / ".venv" / "bin"

pytestmark = pytest.mark.skipif(os.environ.get("VIDSSL_CLUSTER_TESTS") != "1",
                                reason="set VIDSSL_CLUSTER_TESTS=1 (minutes)")

# Where each Ray Train worker of one job ran: {node id: workers}, plus the worker node's id. A subprocess, since
# the state API needs the cluster's token (RAY_AUTH_*), which this process does not carry.
PLACEMENT = """
import json, sys
from ray.job_submission import JobSubmissionClient
from ray.util.state import list_actors, list_nodes
address, submission = sys.argv[1:]
job_id = JobSubmissionClient(address).get_job_info(submission).job_id
actors = list_actors(address=address, filters=[("class_name", "=", "RayTrainWorker"), ("job_id", "=", job_id)],
                     detail=True, limit=1000)
worker_node = [n.node_id for n in list_nodes(address=address) if not n.is_head_node]
print(json.dumps({"workers": [[a.node_id, a.state] for a in actors], "worker_node": worker_node}))
"""


@dataclass
class Cluster:
    env: dict[str, str]  # the client environment: token, MLFLOW_TRACKING_URI
    dashboard: str

    def submit(self, submission: str, *train_args: str) -> subprocess.Popen[str]:
        """`ray job submit` of workflows.train; the Popen ends when the job does (exit code 0: SUCCEEDED)."""
        return subprocess.Popen(
            [str(VENV / "ray"), "job", "submit", "--address", self.dashboard, "--submission-id", submission,
             "--working-dir", str(REPO), "--", "python", "-m", "workflows.train", "--config", "configs/demo.yaml",
             *train_args], env=self.env, cwd=REPO, text=True)

    def placement(self, submission: str) -> tuple[list[tuple[str, str]], str]:
        out = subprocess.run([str(VENV / "python"), "-c", PLACEMENT, self.dashboard, submission], env=self.env,
                             capture_output=True, text=True, check=True).stdout
        found = json.loads(out.strip().splitlines()[-1])
        return [tuple(w) for w in found["workers"]], found["worker_node"][0]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # A short state dir: the Ray temp dirs go inside it (unix socket paths must stay short).
    state = Path(tempfile.mkdtemp(prefix="vidssl-e2e-", dir="/tmp"))
    env = {**os.environ, "VIDSSL_CLUSTER_DIR": str(state), "VIDSSL_NODE_CPUS": "2"}
    subprocess.run([str(LOCAL_SH), "up"], env=env, check=True, timeout=900)
    try:
        exports = subprocess.run([str(LOCAL_SH), "env"], env=env, capture_output=True, text=True, check=True).stdout
        # Evaluated by bash, as a user's shell does: the MLflow password line reads its file.
        evaluated = subprocess.run(["bash", "-c", 'eval "$1" && env -0', "env", exports], env=env,
                                   capture_output=True, text=True, check=True).stdout
        env = dict(item.split("=", 1) for item in evaluated.split("\0") if "=" in item)
        assert env["MLFLOW_TRACKING_PASSWORD"] and env["RAY_AUTH_MODE"] == "token"
        with pytest.MonkeyPatch.context() as patch:  # the MlflowClients of this process log in too
            for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                patch.setenv(name, env[name])
            yield Cluster(env, re.search(r"--address (http://\S+)", exports)[1])
    finally:
        subprocess.run([str(LOCAL_SH), "down"], env=env, check=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)


def tiny_data(root: Path) -> list[str]:
    """A generated 4-class x 6-video set at small sizes: the job makes it, in seconds."""
    return [f"--set={item}" for item in (
        f"data.root={root}", "data.synthetic.classes=4", "data.synthetic.videos_per_class=6",
        "data.synthetic.frames=16", "data.synthetic.size=48", "data.labeled_fraction=0.5", "data.num_frames=4",
        "data.size=40", "augment.crop_size=32", "data.eval_clips=1", "data.decode_cpus=0.25")]


def only_run(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp is not None else []


def test_a_job_spreads_over_both_nodes_and_lands_in_mlflow(cluster: Cluster, tmp_path: Path) -> None:
    experiment, submission = f"cluster-e2e-{uuid.uuid4().hex[:8]}", f"spread-{uuid.uuid4().hex[:8]}"
    start = time.time()
    job = cluster.submit(
        submission, "--smoke-test", *tiny_data(tmp_path / "synth"), "--set=scaling.num_workers=2",
        "--set=scaling.cpus_per_worker=0.75", "--set=scaling.placement_strategy=SPREAD",
        f"--set=output.storage={tmp_path / 'runs'}",
        f"--set=tracking.experiment={experiment}", "--set=tracking.registered_model=null")
    assert job.wait(timeout=1800) == 0
    print(f"job took {time.time() - start:.0f}s")
    runs = only_run(MlflowClient(tracking_uri=cluster.env["MLFLOW_TRACKING_URI"]), experiment)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    workers, _ = cluster.placement(submission)
    assert len({node for node, _ in workers}) == 2, f"the two Ray Train workers did not spread: {workers}"


ITERATIONS = 60
CHECKPOINT_EVERY = 10
KILL_AFTER_STEP = 14  # past the first checkpoint, well before the end


def test_a_lost_worker_node_costs_steps_not_the_run(cluster: Cluster, tmp_path: Path) -> None:
    """Both workers start one per node; the worker node is SIGKILLed mid-run; the group restarts from the
    latest checkpoint on the head node and finishes in the same MLflow run, every step logged once."""
    experiment, submission = f"node-loss-{uuid.uuid4().hex[:8]}", f"node-loss-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(tracking_uri=cluster.env["MLFLOW_TRACKING_URI"])
    sets = [
        "model.primary=small3d_w0.5", "model.auxiliary=small3d_w0.5", f"train.iterations={ITERATIONS}",
        f"train.checkpoint_every={CHECKPOINT_EVERY}", "train.log_every=1", f"train.eval_every={ITERATIONS}",
        "train.batch_size=2", "train.mu=1", "scaling.num_workers=2", "scaling.cpus_per_worker=0.75",
        "scaling.placement_strategy=SPREAD", "scaling.max_failures=2", f"tracking.experiment={experiment}",
        "tracking.registered_model=null", f"output.storage={tmp_path / 'runs'}",
    ]
    start = time.time()
    job = cluster.submit(submission, *tiny_data(tmp_path / "synth"), *[f"--set={item}" for item in sets])

    def step() -> int:
        runs = only_run(client, experiment)
        return int(runs[0].data.metrics.get("step", 0)) if runs else 0

    deadline = time.monotonic() + 900
    while step() < KILL_AFTER_STEP:
        assert job.poll() is None, "the job ended before the node could be killed"
        assert time.monotonic() < deadline, "gave up waiting for the job to train"
        time.sleep(0.5)
    workers, worker_node = cluster.placement(submission)
    assert sum(node == worker_node and state == "ALIVE" for node, state in workers) == 1, workers
    subprocess.run([str(LOCAL_SH), "kill-worker-node"], env=cluster.env, check=True, timeout=60)
    killed_at = step()
    print(f"worker node killed after step {killed_at} ({time.time() - start:.0f}s into the job)")

    assert job.wait(timeout=1800) == 0, "the job did not survive the lost node"
    print(f"job took {time.time() - start:.0f}s")
    runs = only_run(client, experiment)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    for key in ("step", "loss/total"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(1, ITERATIONS + 1)), key
    restored = client.get_metric_history(run_id, "train/restored_from_step")
    assert len(restored) == 1, restored
    assert restored[0].value % CHECKPOINT_EVERY == 0 and CHECKPOINT_EVERY <= restored[0].value <= killed_at
    # First group: one worker per node; second group: both on the head node.
    workers, _ = cluster.placement(submission)
    per_node = Counter(node for node, _ in workers)
    assert per_node[worker_node] == 1 and sorted(per_node.values()) == [1, 3], workers
    print(f"restored from step {restored[0].value:.0f}; steps 1..{ITERATIONS} logged once each; workers {per_node}")
