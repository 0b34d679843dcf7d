"""The cluster material runs with authentication: Ray token auth on every pod of the KubeRay manifests (the token in
a Secret the user creates, never in the repository), the job submitter given the token, NetworkPolicies that admit
only the cluster's own pods and its submitters to the head, and an MLflow server that asks for a login.

    .venv/bin/python -m pytest -q tests/unit/test_cluster_auth.py

Static checks of the YAML (no Kubernetes here) plus `cluster/local.sh` runs that start nothing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LOCAL_SH = CLUSTER / "local.sh"
KUBERAY = sorted((CLUSTER / "kuberay").glob("*.yaml"))
TOKEN_SECRET = "vidssl-ray-auth"
TOKEN_KEY = "auth_token"
MLFLOW_SECRET = "vidssl-mlflow-auth"
DASHBOARD_PORT = 8265
# The one command that makes the token (README and every manifest's header give it).
CREATE_TOKEN = f'kubectl create secret generic {TOKEN_SECRET} --from-literal={TOKEN_KEY}="$(openssl rand -hex 32)"'
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _ray_docs() -> list[tuple[Path, dict]]:
    found = [(path, doc) for path in KUBERAY for doc in _docs(path) if doc["kind"] in ("RayCluster", "RayJob")]
    assert len(found) >= 2, f"expected a RayCluster and a RayJob under {CLUSTER / 'kuberay'}"
    return found


def _groups(spec: dict) -> list[tuple[str, dict]]:
    return [("head", spec["headGroupSpec"]), *((g["groupName"], g) for g in spec.get("workerGroupSpecs", []))]


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _secret_ref(env: dict[str, dict], name: str) -> dict:
    ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef")
    assert ref, f"{name} is not taken from a Secret"
    return ref


def _check_token_env(where: str, container: dict) -> None:
    env = _env(container)
    assert env.get("RAY_AUTH_MODE", {}).get("value") == "token", f"{where}: RAY_AUTH_MODE is not token"
    ref = _secret_ref(env, "RAY_AUTH_TOKEN")
    assert (ref["name"], ref["key"]) == (TOKEN_SECRET, TOKEN_KEY), f"{where}: RAY_AUTH_TOKEN from {ref}"
    # A missing Secret must stop the pod, not start Ray without a token.
    assert not ref.get("optional", False), f"{where}: the token Secret is optional"


def _labels(template: dict) -> dict[str, str]:
    return template.get("metadata", {}).get("labels", {})


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    """A matchLabels-only selector (all these manifests use) selects pods carrying all its labels; an empty one
    selects every pod."""
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are checked here: {selector}"
    return selector.get("matchLabels", {}).items() <= labels.items()


# --- Ray token authentication ------------------------------------------------------------------------


@pytest.mark.parametrize("path, doc", _ray_docs(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_every_ray_pod_runs_with_token_auth_from_the_secret(path: Path, doc: dict) -> None:
    spec = _cluster_spec(doc)
    # The operator's own clients (the autoscaler it injects, its job-status calls) read the same Secret.
    assert spec.get("authOptions") == {"mode": "token", "secretName": TOKEN_SECRET}, f"{path}: authOptions"
    for group_name, group in _groups(spec):
        containers = group["template"]["spec"]["containers"]
        assert containers
        for container in containers:
            _check_token_env(f"{path.name} {group_name}/{container['name']}", container)


@pytest.mark.parametrize("path, doc", _ray_docs(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_the_dashboard_listens_beyond_loopback_only_with_auth(path: Path, doc: dict) -> None:
    head = _cluster_spec(doc)["headGroupSpec"]
    host = head["rayStartParams"].get("dashboard-host", "127.0.0.1")
    if host not in LOOPBACK:
        for container in head["template"]["spec"]["containers"]:
            _check_token_env(f"{path.name} head with dashboard-host {host}", container)


def test_the_rayjob_submitter_has_the_token() -> None:
    jobs = [doc for _, doc in _ray_docs() if doc["kind"] == "RayJob"]
    assert jobs
    for job in jobs:
        # Without a template KubeRay's default submitter pod has no token: `ray job submit` gets 401.
        template = job["spec"].get("submitterPodTemplate")
        assert template, f"RayJob {job['metadata']['name']}: no submitterPodTemplate, so no token for the submitter"
        _check_token_env(f"RayJob {job['metadata']['name']} submitter", template["spec"]["containers"][0])


def test_no_token_is_committed_and_the_secret_is_made_by_one_documented_command() -> None:
    for path in CLUSTER.rglob("*.yaml"):
        for doc in _docs(path):
            assert doc.get("kind") != "Secret", f"{path}: a Secret in the repository (tokens are made by the user)"
    for path in [*KUBERAY, CLUSTER / "README.md"]:
        assert CREATE_TOKEN in path.read_text(), f"{path}: does not give the command that makes the token"


# --- NetworkPolicies ---------------------------------------------------------------------------------


def _peer_kind(peer: dict, cluster_labels: dict[str, str], submitter_labels: dict[str, str]) -> str:
    """What a `from` peer admits: the cluster's own pods, its submitter, or the KubeRay operator; anything
    broader fails."""
    assert "ipBlock" not in peer, f"an ipBlock peer: {peer}"
    pods = peer.get("podSelector")
    assert pods and pods.get("matchLabels"), f"a peer that admits every pod (of a namespace, or of all): {peer}"
    namespaces = peer.get("namespaceSelector")
    if namespaces is None:  # pods of the policy's own namespace
        if _selects(pods, cluster_labels):
            return "cluster"
        if _selects(pods, submitter_labels):
            return "submitter"
    elif namespaces.get("matchLabels", {}).keys() == {"kubernetes.io/metadata.name"} \
            and pods["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}:
        return "operator"
    raise AssertionError(f"a peer that is neither the cluster's pods, its submitter nor the operator: {peer}")


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_network_policies_admit_only_the_cluster_and_its_submitters(path: Path) -> None:
    docs = _docs(path)
    (ray,) = [d for d in docs if d["kind"] in ("RayCluster", "RayJob")]
    spec = _cluster_spec(ray)
    name = ray["metadata"]["name"]
    pods = {group_name: _labels(group["template"]) for group_name, group in _groups(spec)}
    # In-cluster submitters carry this label; a RayJob's submitter pod gets it from its template.
    submitter = {"vidssl.io/ray-submitter": name}
    if ray["kind"] == "RayJob":
        assert _labels(ray["spec"]["submitterPodTemplate"]) == submitter
    cluster_labels = {k: v for k, v in pods["head"].items() if all(labels.get(k) == v for labels in pods.values())}
    assert cluster_labels, f"{path}: the head and worker templates share no label a NetworkPolicy could select"
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]

    for group_name, labels in pods.items():
        covering = [p for p in policies if _selects(p["spec"]["podSelector"], labels)]
        assert covering, f"{path}: no NetworkPolicy selects the {group_name} pods"
        admitted = set()
        for policy in covering:
            assert "Ingress" in policy["spec"]["policyTypes"]
            for rule in policy["spec"].get("ingress", []):
                assert rule.get("from"), f"{path}: {policy['metadata']['name']}: a rule that admits every source"
                for peer in rule["from"]:
                    kind = _peer_kind(peer, cluster_labels, submitter)
                    admitted.add(kind)
                    if kind != "cluster":  # submitters and the operator reach the job API only
                        assert [p["port"] for p in rule.get("ports", [])] == [DASHBOARD_PORT], \
                            f"{path}: {policy['metadata']['name']}: {kind} admitted beyond port {DASHBOARD_PORT}"
        assert "cluster" in admitted, f"{path}: the {group_name} pods do not admit the cluster's own pods"
        if group_name == "head":
            assert "submitter" in admitted, f"{path}: the head does not admit the submitter to the job API"
            if ray["kind"] == "RayJob":  # the operator polls the job's status on the head
                assert "operator" in admitted, f"{path}: the head does not admit the KubeRay operator"


# --- MLflow login ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, doc", _ray_docs(), ids=lambda v: v.name if isinstance(v, Path) else "")
def test_ray_pods_log_in_to_mlflow(path: Path, doc: dict) -> None:
    for group_name, group in _groups(_cluster_spec(doc)):
        for container in group["template"]["spec"]["containers"]:
            env = _env(container)
            for name, key in (("MLFLOW_TRACKING_USERNAME", "username"), ("MLFLOW_TRACKING_PASSWORD", "password")):
                ref = _secret_ref(env, name)
                assert (ref["name"], ref["key"]) == (MLFLOW_SECRET, key), f"{path.name} {group_name}: {name}"
                assert not ref.get("optional", False), f"{path.name} {group_name}: {name} is optional"


def test_local_sh_starts_mlflow_with_basic_auth_by_default() -> None:
    text = LOCAL_SH.read_text()
    assert 'MLFLOW_AUTH="${VIDSSL_MLFLOW_AUTH:-basic}"' in text
    assert "--app-name basic-auth" in text and 'MLFLOW_AUTH_CONFIG_PATH="$MLFLOW_AUTH_CONFIG"' in text
    # Without the credential cache each request re-checks the password hash: seconds each on a busy machine.
    assert "auth_cache_ttl_seconds = " in text and 'wait_for 120 "MLflow login" mlflow_login_ok' in text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_local_sh_env_gives_the_mlflow_login_without_printing_it(tmp_path: Path) -> None:
    password = "pw-" + os.urandom(8).hex()
    (tmp_path / "mlflow_admin_password").write_text(password)
    (tmp_path / "cluster.env").write_text(
        "HOST=127.0.0.1\nRAY_PORT=6379\nDASHBOARD_PORT=8265\nMLFLOW_PORT=5000\nRAY_AUTH=token\nMLFLOW_AUTH=basic\n")
    env = {**os.environ, "VIDSSL_CLUSTER_DIR": str(tmp_path)}
    exports = subprocess.run([str(LOCAL_SH), "env"], env=env, capture_output=True, text=True, check=True).stdout
    assert password not in exports
    shell = subprocess.run(["bash", "-c", 'eval "$1" && echo "$MLFLOW_TRACKING_USERNAME:$MLFLOW_TRACKING_PASSWORD"',
                            "env", exports], env=env, capture_output=True, text=True, check=True).stdout
    assert shell.strip() == f"admin:{password}"


def test_local_sh_refuses_a_user_store_whose_password_is_lost(tmp_path: Path) -> None:
    """MLflow reads the admin password only when it creates the user store: a store without its password file
    would lock every client out, so `up` stops before starting anything."""
    (tmp_path / "mlflow_auth.db").write_bytes(b"")
    ports = {name: str(_free_port()) for name in ("VIDSSL_MLFLOW_PORT", "VIDSSL_DASHBOARD_PORT")}
    env = {**os.environ, **ports, "VIDSSL_CLUSTER_DIR": str(tmp_path), "VIDSSL_RAY_PORT": str(_free_port()),
           "VIDSSL_VENV_BIN": str(Path(sys.executable).parent)}
    try:
        proc = subprocess.run([str(LOCAL_SH), "up"], env=env, capture_output=True, text=True, timeout=120)
    finally:  # a script that failed to refuse has started a cluster: stop it
        if (tmp_path / "cluster.env").exists():
            subprocess.run([str(LOCAL_SH), "down"], env=env, capture_output=True, timeout=120)
    assert proc.returncode == 1
    assert "mlflow_admin_password does not" in proc.stderr and "admin password" in proc.stderr
    assert not (tmp_path / "cluster.env").exists() and not (tmp_path / "mlflow_admin_password").exists()
