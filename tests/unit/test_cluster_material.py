"""The cluster material parses and holds together: the Ray launcher YAML, the KubeRay manifests, the job
runtime_env (pinned to the lock's versions), the CMPL configs, and cluster/local.sh (syntax, loopback default).

    .venv/bin/python -m pytest -q tests/unit/test_cluster_material.py

Nothing here starts a service: the two-node cluster's own tests are in tests/slow/test_cluster_e2e.py.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

from ssl_core.config import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LOCAL_SH = CLUSTER / "local.sh"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
LAUNCHER = CLUSTER / "launcher" / "aws.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
LOCK = REPO / "requirements" / "lock.txt"
# What a vidssl job imports; each must be pinned to the lock's version.
REQUIRED_PINS = {"ray", "torch", "torchvision", "pytorchvideo", "av", "mlflow", "pyyaml", "optuna"}
PIN = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(?P<version>[^\s;\"']+)$")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _manifest(path: Path, kind: str) -> dict:
    """The one document of `kind` in a multi-document manifest (the KubeRay files carry their NetworkPolicies)."""
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc["kind"] == kind]
    assert len(docs) == 1, f"{path}: {len(docs)} documents of kind {kind}"
    return docs[0]


def _pins(packages: list[str]) -> dict[str, str]:
    pins = {}
    for spec in packages:
        match = PIN.match(spec.strip())
        assert match, f"not an exact pin (name==version): {spec!r}"
        pins[match["name"].lower()] = match["version"]
    return pins


def _ray_version() -> str:
    return importlib.metadata.version("ray")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    """Package -> version of every pin in requirements/lock.txt (pip-compile's `name==version \\` lines)."""
    pins = dict(re.findall(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)==(\S+) \\$", LOCK.read_text(), flags=re.M))
    assert len(pins) > 50, f"{LOCK}: expected a full lock, found {len(pins)} pins"
    return {_normalise(name): version for name, version in pins.items()}


# --- the lock ----------------------------------------------------------------------------------------


def test_every_pin_of_the_lock_carries_a_hash() -> None:
    # A pin is a line that starts with a name; its hashes are the indented lines under it (comments aside).
    blocks = re.findall(r"^([A-Za-z0-9][^\n]*)\n((?:[ \t][^\n]*\n?)*)", LOCK.read_text(), flags=re.M)
    assert len(blocks) > 50, f"{LOCK}: expected a full lock, found {len(blocks)} pins"
    for pin, indented in blocks:
        assert "--hash=sha256:" in indented, f"{LOCK}: no hash for {pin}"


def test_the_installed_versions_are_the_locks() -> None:
    """`make install` takes every package from the lock: what runs here is what the lock says, whatever pip
    would pick today."""
    # The virtualenv's site-packages only: Ray puts its vendored copies (psutil, colorama) on sys.path.
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    installed = {_normalise(d.metadata["Name"]): d.version for d in importlib.metadata.distributions(path=site)}
    # The project itself (editable) and the installer that came with the virtualenv are not dependencies.
    for name in ("vidssl", "pip"):
        installed.pop(name, None)
    lock = _lock()
    differ = {name: (lock.get(name), version) for name, version in installed.items() if lock.get(name) != version}
    assert not differ, f"installed packages not at the lock's version (lock, installed): {differ}"
    missing = set(lock) - set(installed)
    assert not missing, f"in the lock but not installed: {sorted(missing)}"


# --- runtime_env -------------------------------------------------------------------------------------


def test_runtime_env_pins_equal_the_lock() -> None:
    env = _yaml(RUNTIME_ENV)
    pins = _pins(env["pip"]["packages"])
    assert set(pins) >= REQUIRED_PINS, f"missing pins: {REQUIRED_PINS - set(pins)}"
    lock = _lock()
    stale = {name: (version, lock.get(_normalise(name))) for name, version in pins.items()
             if lock.get(_normalise(name)) != version}
    assert not stale, f"cluster/runtime_env.yaml pins differ from requirements/lock.txt (pinned, locked): {stale}"


def test_runtime_env_is_a_valid_ray_runtime_env() -> None:
    from ray.runtime_env import RuntimeEnv

    env = _yaml(RUNTIME_ENV)
    assert "working_dir" not in env  # given per submission (--working-dir) or per RayJob (a zip URI)
    assert all(isinstance(v, str) for v in env["env_vars"].values())
    assert {"data/", "runs/", ".venv/", ".cluster/", "mlflow.db"} <= set(env["excludes"])
    parsed = RuntimeEnv(**env)
    assert parsed["pip"]["packages"] == env["pip"]["packages"]


# --- Ray cluster launcher ----------------------------------------------------------------------------


def test_launcher_yaml_matches_rays_schema_and_has_cpu_head_and_gpu_workers() -> None:
    import jsonschema
    import ray.autoscaler

    cfg = _yaml(LAUNCHER)
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types", "head_node_type",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, key
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    head = types[cfg["head_node_type"]]
    assert "CPU" in head["resources"] and head["resources"].get("GPU", 0) == 0
    gpu_types = {name: t for name, t in types.items()
                 if name != cfg["head_node_type"] and t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no GPU worker type"
    for t in gpu_types.values():
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"] and t["resources"]["CPU"] >= 1
    assert sum(t.get("min_workers", 0) for t in types.values()) <= cfg["max_workers"]
    for image in (cfg["docker"]["image"], cfg["docker"]["head_image"]):
        assert f":{_ray_version()}-" in image


def test_launcher_installs_the_runtime_env_pins_and_keeps_the_dashboard_on_loopback() -> None:
    cfg = _yaml(LAUNCHER)
    installed = dict(_pins(re.findall(r'"([^"\s]+==[^"\s]+)"', " ".join(cfg["setup_commands"]))))
    assert installed == _pins(_yaml(RUNTIME_ENV)["pip"]["packages"])
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "RAY_AUTH_MODE=token" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(cfg["worker_start_ray_commands"])


# --- KubeRay -----------------------------------------------------------------------------------------


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def _gpus(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def _check_ray_cluster_spec(spec: dict) -> int:
    """Head without GPUs, at least one GPU worker group, MLflow URI from a ConfigMap/Secret; returns the GPUs of
    the worker groups at their minimum size."""
    assert spec["rayVersion"] == _ray_version()
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"  # pod-internal; exposure is the Service's
    assert all(_gpus(c) == 0 for c in _containers(head))
    groups = spec["workerGroupSpecs"]
    gpu_groups = [g for g in groups if any(_gpus(c) >= 1 for c in _containers(g))]
    assert gpu_groups, "no GPU worker group"
    for group in [head, *groups]:
        for container in _containers(group):
            assert f":{_ray_version()}-" in container["image"]
            env = {e["name"]: e for e in container.get("env", [])}
            ref = env["MLFLOW_TRACKING_URI"]["valueFrom"]
            assert "configMapKeyRef" in ref or "secretKeyRef" in ref
    for g in groups:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        for c in _containers(g):
            assert c["resources"]["requests"].get("nvidia.com/gpu") == c["resources"]["limits"].get("nvidia.com/gpu")
    return sum(g["minReplicas"] * sum(_gpus(c) for c in _containers(g)) for g in gpu_groups)


def test_raycluster_manifest() -> None:
    doc = _manifest(RAYCLUSTER, "RayCluster")
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["metadata"]["name"]
    _check_ray_cluster_spec(doc["spec"])


def test_rayjob_manifest_entrypoint_config_and_runtime_env() -> None:
    doc = _manifest(RAYJOB, "RayJob")
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "-m"] and argv[2].startswith("workflows.")
    assert (REPO / (argv[2].replace(".", "/") + ".py")).is_file()
    config_path = REPO / argv[argv.index("--config") + 1]
    assert config_path.is_file()
    cfg = load_config(config_path)

    job_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert job_env.pop("working_dir").endswith(".zip")
    assert job_env == _yaml(RUNTIME_ENV), "runtimeEnvYAML must equal cluster/runtime_env.yaml (+ working_dir)"

    gpus = _check_ray_cluster_spec(spec["rayClusterSpec"])
    if cfg.scaling.use_gpu:
        assert gpus >= cfg.scaling.num_workers, "the RayJob's cluster has fewer GPUs than the config's workers"


# --- CMPL configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ucf101_cmpl.yaml", "kinetics400_cmpl.yaml"])
def test_cmpl_configs_load_with_the_published_settings(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)  # validation only: data.root is not read
    assert cfg.algorithm.name == "cmpl"
    assert (cfg.model.primary, cfg.model.auxiliary) == ("r3d_50", "r3d_50_w0.25+tg")  # the paper's pair, TG view
    assert cfg.data.num_frames == 8
    params = cfg.algorithm.resolved_params()
    assert params.tau == 0.95 and params.lambda_u == 1.0
    # the recipe on the paper's schedule: warm-up, ramp, EMA teacher made at the end of the warm-up
    assert 0 < params.unsup_warmup < cfg.train.iterations and params.ema_teacher
    assert cfg.train.ema_decay > 0 and cfg.train.ema_start == params.unsup_warmup
    assert cfg.train.optimizer == "sgd"
    assert cfg.scaling.use_gpu and cfg.scaling.num_workers > 1
    assert not cfg.data.synthetic.enabled
    assert Path(cfg.data.root).is_absolute() and Path(cfg.output.storage).is_absolute()
    assert cfg.tracking.uri is None  # $MLFLOW_TRACKING_URI of the cluster


def test_cmpl_label_fractions_one_and_ten_percent() -> None:
    ucf = load_config(REPO / "configs" / "ucf101_cmpl.yaml")
    assert ucf.data.layout == "ucf101" and ucf.data.labeled_per_class == 1 and ucf.data.labeled_fraction is None
    ucf10 = load_config(REPO / "configs" / "ucf101_cmpl.yaml",
                        ["data.labeled_per_class=null", "data.labeled_fraction=0.1"])
    assert ucf10.data.labeled_fraction == 0.1
    k400 = load_config(REPO / "configs" / "kinetics400_cmpl.yaml")
    assert k400.data.layout == "kinetics" and k400.data.labeled_fraction == 0.01 and k400.data.csv_path
    assert load_config(REPO / "configs" / "kinetics400_cmpl.yaml", ["data.labeled_fraction=0.1"]).data.labeled_fraction


# --- cluster/local.sh --------------------------------------------------------------------------------


def test_local_sh_syntax_and_usage() -> None:
    subprocess.run(["bash", "-n", str(LOCAL_SH)], check=True)
    assert os.access(LOCAL_SH, os.X_OK)
    text = LOCAL_SH.read_text()
    assert "set -euo pipefail" in text
    out = subprocess.run([str(LOCAL_SH), "--help"], capture_output=True, text=True, check=True).stdout
    assert all(word in out for word in ("up", "down", "status", "--host"))
    bad = subprocess.run([str(LOCAL_SH), "sideways"], capture_output=True, text=True)
    assert bad.returncode == 2


def test_local_sh_binds_loopback_by_default() -> None:
    text = LOCAL_SH.read_text()
    assert 'HOST="${VIDSSL_CLUSTER_HOST:-127.0.0.1}"' in text
    # every listening service the script starts takes that host
    assert re.search(r'mlflow" server --host "\$HOST"', text)
    assert '--dashboard-host "$HOST"' in text
    assert "ray stop" not in re.sub(r"#.*", "", text)  # would stop every Ray instance on the machine


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


@pytest.mark.parametrize("host, warns", [(None, False), ("0.0.0.0", True)])
def test_local_sh_warns_on_another_host_and_refuses_busy_ports(tmp_path: Path, host: str | None, warns: bool) -> None:
    with _busy_port() as sock:
        # VIDSSL_VENV_BIN: this interpreter's, so a checkout without its own .venv gets as far as the port check.
        env = {**os.environ, "VIDSSL_CLUSTER_DIR": str(tmp_path), "VIDSSL_RAY_PORT": str(sock.getsockname()[1]),
               "VIDSSL_VENV_BIN": str(Path(sys.executable).parent)}
        args = [str(LOCAL_SH), *(["--host", host] if host else []), "up"]
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and "is in use" in proc.stderr  # stopped before starting anything
    assert ("WARNING" in proc.stderr) == warns
    assert not (tmp_path / "cluster.env").exists()


def test_local_sh_down_and_status_without_a_cluster(tmp_path: Path) -> None:
    env = {**os.environ, "VIDSSL_CLUSTER_DIR": str(tmp_path)}
    assert subprocess.run([str(LOCAL_SH), "down"], env=env, capture_output=True).returncode == 0
    assert subprocess.run([str(LOCAL_SH), "status"], env=env, capture_output=True).returncode == 1


def test_cluster_state_is_git_ignored() -> None:
    assert "/.cluster/" in (REPO / ".gitignore").read_text().splitlines()
