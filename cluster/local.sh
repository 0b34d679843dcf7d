#!/usr/bin/env bash
# A real two-node Ray cluster plus an MLflow tracking server on this machine: the rehearsal of a cluster.
#
#   cluster/local.sh up          start: Ray head node + Ray worker node (each its own raylet) + MLflow server
#   cluster/local.sh status      the Ray nodes, the MLflow URL, which of our processes are alive
#   cluster/local.sh env         the exports a client shell needs (eval "$(cluster/local.sh env)")
#   cluster/local.sh down        stop both Ray nodes and the MLflow server (only the processes started here)
#   cluster/local.sh kill-worker-node
#                                SIGKILL every process of the worker node (raylet, its workers, their jobs'
#                                actors): a machine lost mid-run, for rehearsing recovery; `down` still cleans up
#
# Options (before the command):
#   --host HOST   bind the Ray dashboard / job API and the MLflow server to HOST instead of 127.0.0.1
#                 (prints a WARNING: keep the Ray token and the MLflow login on)
#   -h, --help    this text
#
# Environment (defaults in brackets):
#   VIDSSL_CLUSTER_HOST [127.0.0.1]   same as --host
#   VIDSSL_CLUSTER_DIR  [<repo>/.cluster]   state, pids, logs, the MLflow SQLite store and artifact store
#   VIDSSL_RAY_PORT [6379]  VIDSSL_DASHBOARD_PORT [8265]  VIDSSL_MLFLOW_PORT [5000]
#       the other Ray ports of the two nodes are VIDSSL_RAY_PORT+1..+7 (head) and +11..+16 (worker)
#   VIDSSL_NODE_CPUS [1]    logical CPUs of each node (this machine's cores are shared by both nodes)
#   VIDSSL_OBJECT_STORE_MB [1024]   object store per node
#   VIDSSL_RAY_AUTH [token]  token: Ray token authentication with a token in $VIDSSL_CLUSTER_DIR/auth_token
#                            (clients need RAY_AUTH_MODE=token + RAY_AUTH_TOKEN_PATH, see `env`);
#                            disabled: no authentication (only for a throw-away rehearsal)
#   VIDSSL_MLFLOW_AUTH [basic]  basic: MLflow's basic-auth app (`mlflow server --app-name basic-auth`), user admin
#                            with a generated password in $VIDSSL_CLUSTER_DIR/mlflow_admin_password, users in
#                            $VIDSSL_CLUSTER_DIR/mlflow_auth.db (clients need MLFLOW_TRACKING_USERNAME /
#                            MLFLOW_TRACKING_PASSWORD, see `env`); disabled: no login (a throw-away rehearsal)
#   VIDSSL_VENV_BIN [<repo>/.venv/bin]   where ray, mlflow and python come from (first on the nodes' PATH,
#                            so a job's plain `python` is that interpreter)
#
# Jobs then run with:
#   eval "$(cluster/local.sh env)"
#   ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
#       python -m workflows.train --config configs/demo.yaml ...
# MLFLOW_TRACKING_URI (and the MLflow login) is also set in the nodes' environment, so every job logs to the
# server by default.
# `down` never uses `ray stop` (it would stop every Ray instance on the machine, other users' too): it
# signals the process sessions recorded by `up` and the Ray processes under this cluster's Ray temp dirs.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST="${VIDSSL_CLUSTER_HOST:-127.0.0.1}"
CMD=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --host) [[ $# -ge 2 ]] || { echo "error: --host needs a value" >&2; exit 2; }; HOST="$2"; shift 2 ;;
        --host=*) HOST="${1#--host=}"; shift ;;
        -h|--help|help) usage; exit 0 ;;
        up|down|status|env|kill-worker-node) [[ -z "$CMD" ]] || { echo "error: one command at a time" >&2; exit 2; }; CMD="$1"; shift ;;
        *) echo "error: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ -n "$CMD" ]] || { usage >&2; exit 2; }

STATE_DIR="${VIDSSL_CLUSTER_DIR:-$REPO/.cluster}"
mkdir -p "$STATE_DIR"
STATE_DIR="$(cd "$STATE_DIR" && pwd)"
STATE_FILE="$STATE_DIR/cluster.env"
LOG_DIR="$STATE_DIR/logs"
MLFLOW_PASSWORD_FILE="$STATE_DIR/mlflow_admin_password"
MLFLOW_AUTH_CONFIG="$STATE_DIR/mlflow_auth.ini"
VENV_BIN="${VIDSSL_VENV_BIN:-$REPO/.venv/bin}"

log() { echo "[local.sh] $*"; }
warn() { echo "[local.sh] WARNING: $*" >&2; }
die() { echo "[local.sh] error: $*" >&2; exit 1; }

is_loopback() { [[ "$1" == "127.0.0.1" || "$1" == "localhost" || "$1" == "::1" ]]; }
# Where clients on this machine reach the services: loopback, unless they are bound to one other address.
client_host() {
    if is_loopback "$HOST" || [[ "$HOST" == "0.0.0.0" || "$HOST" == "::" ]]; then echo 127.0.0.1; else echo "$HOST"; fi
}
port_busy() { (exec 3<>"/dev/tcp/$(client_host)/$1") 2>/dev/null; }
alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# Every process of this cluster: the sessions `up` started (setsid), their descendants, and Ray processes whose
# command line names one of this cluster's Ray temp dirs. Nothing else on the machine matches.
cluster_pids() {
    session_pids "${MLFLOW_SID:-} ${HEAD_SID:-} ${WORKER_SID:-}" "${HEAD_TMP:-}" "${WORKER_TMP:-}"
}

# The worker node alone: its `ray start` session, the raylet's workers below it, Ray processes of its temp dir.
worker_node_pids() {
    session_pids "${WORKER_SID:-}" "${WORKER_TMP:-}" ""
}

session_pids() {  # session_pids "SID..." TMP1 TMP2
    ps -eo pid=,ppid=,sid=,args= | awk -v sids="$1" -v self="$$" \
            -v t1="${2:-/nonexistent-vidssl}" -v t2="${3:-/nonexistent-vidssl}" '
        BEGIN { n = split(sids, s, " "); for (i = 1; i <= n; i++) want[s[i]] = 1 }
        { pid = $1; ppid[pid] = $2; args = $0; sub(/^ *[0-9]+ +[0-9]+ +[0-9]+ /, "", args)
          ray = index(args, "site-packages/ray/") > 0 && (index(args, t1) > 0 || index(args, t2) > 0)
          if (pid != self && (($3 in want) || ray)) mine[pid] = 1; all[pid] = 1 }
        END { changed = 1
              while (changed) { changed = 0
                  for (p in all) if (!(p in mine) && (ppid[p] in mine) && p != self) { mine[p] = 1; changed = 1 } }
              for (p in mine) print p }'
}

load_state() {
    [[ -f "$STATE_FILE" ]] || return 1
    # shellcheck disable=SC1090
    source "$STATE_FILE"
}

client_env() {
    # The variables a client (ray CLI, ray job submit, the workflows) needs for this cluster.
    if [[ "$RAY_AUTH" == "token" ]]; then
        export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE_DIR/auth_token"
    else
        export RAY_AUTH_MODE=disabled
    fi
    if [[ "${MLFLOW_AUTH:-disabled}" == "basic" ]]; then
        export MLFLOW_TRACKING_USERNAME=admin
        MLFLOW_TRACKING_PASSWORD="$(cat "$MLFLOW_PASSWORD_FILE")"
        export MLFLOW_TRACKING_PASSWORD
    fi
}

# MLflow's basic-auth app: an auth config file, its user store, and the admin password. MLflow reads the password
# only when it creates the user store, so the two are kept together (and `down` keeps both).
mlflow_auth_setup() {
    local db="$STATE_DIR/mlflow_auth.db"
    "$VENV_BIN/python" -c "import flask_wtf" 2>/dev/null \
        || die "MLflow's basic-auth app needs Flask-WTF (mlflow[auth]; make install), or set VIDSSL_MLFLOW_AUTH=disabled"
    if [[ ! -s "$MLFLOW_PASSWORD_FILE" ]]; then
        [[ ! -e "$db" ]] || die "$db exists but $MLFLOW_PASSWORD_FILE does not: the admin password of that user" \
            "store is unknown; restore the file, or move $db away to start a new user store"
        (umask 077 && "$VENV_BIN/python" -c "import secrets; print(secrets.token_urlsafe(24), end='')" \
            >"$MLFLOW_PASSWORD_FILE")
    fi
    cat >"$MLFLOW_AUTH_CONFIG" <<EOF
[mlflow]
default_permission = READ
database_uri = sqlite:///$db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# Without it every request checks the password hash again: 2 to 5 s per request on this machine under load, which
# made a job's first MLflow call time out. One server worker (--workers 1), so the cache is never stale.
auth_cache_ttl_seconds = 600
EOF
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what="$2"; shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
    log "$what ready after $((SECONDS - START))s"
}

nodes_py() {  # nodes_py count|table
    "$VENV_BIN/python" - "http://$(client_host):$DASHBOARD_PORT" "$1" <<'EOF'
import sys
from ray.util.state import list_nodes
nodes = list_nodes(address=sys.argv[1], detail=True)
if sys.argv[2] == "count":
    print(sum(n.state == "ALIVE" for n in nodes))
else:
    for n in sorted(nodes, key=lambda n: not n.is_head_node):
        cpus = n.resources_total.get("CPU", 0)
        print(f"  {'head  ' if n.is_head_node else 'worker'} {n.node_id[:12]}  {n.node_ip}  {n.state:6}  CPU {cpus:g}"
              f"  GPU {n.resources_total.get('GPU', 0):g}")
    print(f"  alive nodes: {sum(n.state == 'ALIVE' for n in nodes)}")
EOF
}

two_nodes_alive() { [[ "$(nodes_py count 2>/dev/null)" == "2" ]]; }
mlflow_healthy() { curl -fsS "http://$(client_host):$MLFLOW_PORT/health" >/dev/null; }
# An API call with the login (curl reads it from stdin, so `ps` does not show it): the login works, and the server's
# credential cache holds it before the first job asks.
mlflow_login_ok() {
    curl -fsS --max-time 60 -K - "http://$(client_host):$MLFLOW_PORT/api/2.0/mlflow/experiments/search?max_results=1" \
        >/dev/null <<<"user = \"$MLFLOW_TRACKING_USERNAME:$MLFLOW_TRACKING_PASSWORD\""
}

kill_session() {  # kill_session SID: every process of one failed `ray start` attempt
    local pids
    pids=$(ps -eo pid=,sid= | awk -v sid="$1" '$2 == sid { print $1 }' | tr '\n' ' ')
    # shellcheck disable=SC2086
    [[ -z "${pids// /}" ]] || kill -KILL $pids 2>/dev/null || true
}

# start_node ROLE ARGS...: `ray start ARGS` in a session of its own (recorded as <ROLE>_SID in the state file).
# Retried: on a loaded machine the raylet may give up waiting for its dashboard agent (a fixed 15 s wait in
# Ray, ray-project/ray#65983) and `ray start` then fails with "The current node timed out during startup".
start_node() {
    local role="$1" attempt sid_var
    shift
    sid_var="$(tr '[:lower:]' '[:upper:]' <<<"$role")_SID"
    for attempt in 1 2 3; do
        if setsid -w bash -c 'echo "$1=$$" >>"$0"; shift 2; exec "$@"' "$STATE_FILE" "$sid_var" x "$@" \
                >"$LOG_DIR/ray-$role.log" 2>&1 </dev/null; then
            return 0
        fi
        log "ray start ($role node) failed on attempt $attempt:" \
            "$(grep -m1 -E '^(Exception|[A-Za-z]*Error)' "$LOG_DIR/ray-$role.log" || true)"
        load_state
        kill_session "${!sid_var}"
        sleep 2
    done
    tail -20 "$LOG_DIR/ray-$role.log" >&2
    return 1
}

cmd_up() {
    if load_state; then
        local running=0 p
        for p in $(cluster_pids); do running=$((running + 1)); done
        if ((running > 0)); then
            client_env
            if two_nodes_alive && mlflow_healthy; then
                log "already up ($running processes); nothing to do"
                cmd_status
                return 0
            fi
            die "a previous cluster is partly running ($running processes): run '$0 down' first"
        fi
        log "removing the state of a cluster that is no longer running"
        rm -f "$STATE_FILE"
    fi

    RAY_PORT="${VIDSSL_RAY_PORT:-6379}"
    DASHBOARD_PORT="${VIDSSL_DASHBOARD_PORT:-8265}"
    MLFLOW_PORT="${VIDSSL_MLFLOW_PORT:-5000}"
    NODE_CPUS="${VIDSSL_NODE_CPUS:-1}"
    OBJECT_STORE_MB="${VIDSSL_OBJECT_STORE_MB:-1024}"
    RAY_AUTH="${VIDSSL_RAY_AUTH:-token}"
    [[ "$RAY_AUTH" == "token" || "$RAY_AUTH" == "disabled" ]] || die "VIDSSL_RAY_AUTH must be token or disabled"
    MLFLOW_AUTH="${VIDSSL_MLFLOW_AUTH:-basic}"
    [[ "$MLFLOW_AUTH" == "basic" || "$MLFLOW_AUTH" == "disabled" ]] || die "VIDSSL_MLFLOW_AUTH must be basic or disabled"
    for exe in ray mlflow python; do [[ -x "$VENV_BIN/$exe" ]] || die "$VENV_BIN/$exe not found (make install)"; done

    # The address Ray nodes register with. Ray never registers a node as 127.0.0.1 (it swaps in this machine's
    # address), so on loopback we let Ray pick it and read it back; the dashboard and MLflow stay on 127.0.0.1.
    NODE_IP=""
    if ! is_loopback "$HOST"; then
        warn "binding the Ray dashboard / job API and the MLflow server to $HOST, not 127.0.0.1:"
        warn "anyone who can reach $HOST:$DASHBOARD_PORT can run code on this machine (keep token auth on),"
        if [[ "$MLFLOW_AUTH" == "basic" ]]; then
            warn "and $HOST:$MLFLOW_PORT serves every run to whoever has the MLflow login (plain HTTP: no TLS)."
        else
            warn "and anyone who can reach $HOST:$MLFLOW_PORT can read and change every run (MLflow has no login)."
        fi
        if [[ "$HOST" == "0.0.0.0" || "$HOST" == "::" ]]; then
            NODE_IP="${VIDSSL_NODE_IP:-$(hostname -I | awk '{print $1}')}"
        else
            NODE_IP="$HOST"
        fi
    fi
    [[ "$RAY_AUTH" == "token" ]] || warn "Ray token authentication is disabled (VIDSSL_RAY_AUTH=disabled)"
    [[ "$MLFLOW_AUTH" == "basic" ]] || warn "the MLflow server has no login (VIDSSL_MLFLOW_AUTH=disabled)"

    # One Ray temp dir per node, as on real machines: two nodes sharing one would share a session dir, and the
    # worker node would delete a job's working_dir under the driver's feet when its own tasks were done.
    # Ray puts unix sockets there: the paths must stay short (< 108 bytes).
    RAY_BASE="$STATE_DIR"
    ((${#RAY_BASE} <= 30)) || RAY_BASE="/tmp/vidssl-$(id -u)-$(printf %s "$STATE_DIR" | cksum | cut -d' ' -f1)"
    HEAD_TMP="$RAY_BASE/head/ray"
    WORKER_TMP="$RAY_BASE/worker/ray"
    HEAD_PORTS=( $((RAY_PORT + 1)) $((RAY_PORT + 2)) $((RAY_PORT + 3)) $((RAY_PORT + 4)) $((RAY_PORT + 5))
                 $((RAY_PORT + 6)) $((RAY_PORT + 7)) )
    WORKER_PORTS=( $((RAY_PORT + 11)) $((RAY_PORT + 12)) $((RAY_PORT + 13)) $((RAY_PORT + 14)) $((RAY_PORT + 15))
                   $((RAY_PORT + 16)) )
    local port
    for port in "$RAY_PORT" "$DASHBOARD_PORT" "$MLFLOW_PORT" "${HEAD_PORTS[@]}" "${WORKER_PORTS[@]}"; do
        port_busy "$port" && die "port $port is in use (another Ray / MLflow?): choose other ports with" \
            "VIDSSL_RAY_PORT / VIDSSL_DASHBOARD_PORT / VIDSSL_MLFLOW_PORT"
    done

    mkdir -p "$LOG_DIR" "$STATE_DIR/mlartifacts" "$HEAD_TMP" "$WORKER_TMP"
    rm -f "$HEAD_TMP/ray_current_cluster" "$WORKER_TMP/ray_current_cluster"
    if [[ "$RAY_AUTH" == "token" && ! -s "$STATE_DIR/auth_token" ]]; then
        (umask 077 && "$VENV_BIN/python" -c "import secrets; print(secrets.token_hex(32), end='')" \
            >"$STATE_DIR/auth_token")
    fi
    [[ "$MLFLOW_AUTH" == "disabled" ]] || mlflow_auth_setup
    client_env
    # Inherited by both nodes, hence by every job's driver and worker processes.
    export PATH="$VENV_BIN:$PATH"
    export MLFLOW_TRACKING_URI="http://$(client_host):$MLFLOW_PORT"
    export RAY_USAGE_STATS_ENABLED=0
    # A busy machine starts Ray's Python helpers slowly: give the raylet longer to wait for its agents (whether
    # Ray 2.60 applies this to the dashboard agent's port files is not established; start_node also retries).
    export RAY_agent_register_timeout_ms="${RAY_agent_register_timeout_ms:-120000}"
    export RAY_raylet_start_wait_time_s="${RAY_raylet_start_wait_time_s:-120}"

    START=$SECONDS
    cat >"$STATE_FILE" <<EOF
HOST=$HOST
RAY_PORT=$RAY_PORT
DASHBOARD_PORT=$DASHBOARD_PORT
MLFLOW_PORT=$MLFLOW_PORT
HEAD_TMP=$HEAD_TMP
WORKER_TMP=$WORKER_TMP
RAY_AUTH=$RAY_AUTH
MLFLOW_AUTH=$MLFLOW_AUTH
EOF
    # A failed `up` stops whatever it had started.
    trap '[[ -n "${UP_DONE:-}" ]] || { log "up failed: stopping what was started"; cmd_down; }' EXIT

    log "MLflow server on $HOST:$MLFLOW_PORT (SQLite $STATE_DIR/mlflow.db, artifacts $STATE_DIR/mlartifacts," \
        "login: $MLFLOW_AUTH)"
    local mlflow_app=()
    [[ "$MLFLOW_AUTH" == "disabled" ]] || mlflow_app=(--app-name basic-auth)
    # Secrets reach the server through its environment, never its command line (which `ps` shows to everyone).
    MLFLOW_AUTH_CONFIG_PATH="$MLFLOW_AUTH_CONFIG" MLFLOW_AUTH_ADMIN_PASSWORD="${MLFLOW_TRACKING_PASSWORD:-}" \
    MLFLOW_FLASK_SERVER_SECRET_KEY="$("$VENV_BIN/python" -c "import secrets; print(secrets.token_hex(32))")" \
        setsid "$VENV_BIN/mlflow" server --host "$HOST" --port "$MLFLOW_PORT" --workers 1 "${mlflow_app[@]}" \
        --backend-store-uri "sqlite:///$STATE_DIR/mlflow.db" \
        --artifacts-destination "$STATE_DIR/mlartifacts" \
        >"$LOG_DIR/mlflow.log" 2>&1 </dev/null &
    MLFLOW_SID=$!
    echo "MLFLOW_SID=$MLFLOW_SID" >>"$STATE_FILE"

    local obj=$((OBJECT_STORE_MB * 1024 * 1024))
    local common=(--num-cpus "$NODE_CPUS" --num-gpus 0 --object-store-memory "$obj"
                  --disable-usage-stats)
    log "Ray head node: GCS port $RAY_PORT, dashboard + job API $HOST:$DASHBOARD_PORT, $NODE_CPUS CPU"
    [[ -z "$NODE_IP" ]] || common+=(--node-ip-address "$NODE_IP")
    # RAY_TMPDIR makes the node's temp dir Ray's default for every process on it, so Ray code that looks the
    # cluster up without an address (Ray Train's state queries) finds this cluster, not another on the machine.
    export RAY_TMPDIR="${HEAD_TMP%/ray}"
    start_node head "$VENV_BIN/ray" start --head --port "$RAY_PORT" "${common[@]}" --temp-dir "$HEAD_TMP" \
        --resources '{"vidssl_head_node": 1}' \
        --dashboard-host "$HOST" --dashboard-port "$DASHBOARD_PORT" \
        --node-manager-port "${HEAD_PORTS[0]}" --object-manager-port "${HEAD_PORTS[1]}" \
        --dashboard-agent-listen-port "${HEAD_PORTS[2]}" --dashboard-agent-grpc-port "${HEAD_PORTS[3]}" \
        --metrics-export-port "${HEAD_PORTS[4]}" --runtime-env-agent-port "${HEAD_PORTS[5]}" \
        --ray-client-server-port "${HEAD_PORTS[6]}" || die "the Ray head node did not start: see $LOG_DIR"
    load_state
    local gcs
    gcs=$(cat "$HEAD_TMP/ray_current_cluster" 2>/dev/null || true)
    [[ "$gcs" == *":$RAY_PORT" ]] || die "could not read the head node's address from $HEAD_TMP/ray_current_cluster"
    NODE_IP="${gcs%:*}"
    echo "NODE_IP=$NODE_IP" >>"$STATE_FILE"
    [[ " ${common[*]} " == *" --node-ip-address "* ]] || common+=(--node-ip-address "$NODE_IP")

    log "Ray worker node: joins $NODE_IP:$RAY_PORT, $NODE_CPUS CPU"
    export RAY_TMPDIR="${WORKER_TMP%/ray}"
    start_node worker "$VENV_BIN/ray" start --address "$NODE_IP:$RAY_PORT" "${common[@]}" --temp-dir "$WORKER_TMP" \
        --resources '{"vidssl_worker_node": 1}' \
        --node-manager-port "${WORKER_PORTS[0]}" --object-manager-port "${WORKER_PORTS[1]}" \
        --dashboard-agent-listen-port "${WORKER_PORTS[2]}" --dashboard-agent-grpc-port "${WORKER_PORTS[3]}" \
        --metrics-export-port "${WORKER_PORTS[4]}" --runtime-env-agent-port "${WORKER_PORTS[5]}" \
        || die "the Ray worker node did not start: see $LOG_DIR"
    load_state
    wait_for 120 "two Ray nodes" two_nodes_alive || die "the two Ray nodes did not come up: see $LOG_DIR"
    wait_for 120 "MLflow" mlflow_healthy || die "MLflow did not answer: see $LOG_DIR/mlflow.log"
    if [[ "$MLFLOW_AUTH" == "basic" ]]; then
        wait_for 120 "MLflow login" mlflow_login_ok || die "MLflow refused the admin login: see $LOG_DIR/mlflow.log"
    fi
    UP_DONE=1
    log "up in $((SECONDS - START))s"
    cmd_status
    echo
    echo "# a client shell needs:"
    cmd_env
}

cmd_status() {
    load_state || { log "down (no $STATE_FILE)"; return 1; }
    client_env
    local n
    n=$(cluster_pids | wc -l)
    echo "Ray GCS:        $NODE_IP:$RAY_PORT"
    echo "Ray dashboard:  http://$(client_host):$DASHBOARD_PORT   (job API; bound to $HOST)"
    echo "MLflow:         http://$(client_host):$MLFLOW_PORT   (bound to $HOST; store $STATE_DIR/mlflow.db)"
    if [[ "${MLFLOW_AUTH:-disabled}" == "basic" ]]; then
        echo "MLflow login:   admin, password in $MLFLOW_PASSWORD_FILE"
    else
        echo "MLflow login:   none"
    fi
    echo "processes:      $n"
    if mlflow_healthy; then echo "MLflow health:  OK"; else echo "MLflow health:  NOT ANSWERING"; fi
    echo "Ray nodes:"
    if nodes_py table 2>/dev/null; then
        "$VENV_BIN/ray" status --address "$NODE_IP:$RAY_PORT" 2>/dev/null | sed -n '/^Node status/,/^Demands/p' \
            | grep -v '^Demands' || true
    else
        echo "  NOT ANSWERING on http://$(client_host):$DASHBOARD_PORT"
        return 1
    fi
}

cmd_env() {
    load_state || die "the cluster is not up"
    if [[ "$RAY_AUTH" == "token" ]]; then
        echo "export RAY_AUTH_MODE=token"
        echo "export RAY_AUTH_TOKEN_PATH=$STATE_DIR/auth_token"
    else
        echo "export RAY_AUTH_MODE=disabled"
    fi
    echo "export MLFLOW_TRACKING_URI=http://$(client_host):$MLFLOW_PORT"
    if [[ "${MLFLOW_AUTH:-disabled}" == "basic" ]]; then
        # The password is read from its file when the line is evaluated: `up` and `env` never print it.
        echo "export MLFLOW_TRACKING_USERNAME=admin"
        echo "export MLFLOW_TRACKING_PASSWORD=\"\$(cat $(printf %q "$MLFLOW_PASSWORD_FILE"))\""
    fi
    echo "# ray job submit --address http://$(client_host):$DASHBOARD_PORT --working-dir . --" \
        "python -m workflows.train ..."
}

cmd_down() {
    if ! load_state; then
        log "nothing to stop (no $STATE_FILE)"
        return 0
    fi
    START=$SECONDS
    local pids
    pids=$(cluster_pids | tr '\n' ' ')
    if [[ -n "${pids// /}" ]]; then
        log "stopping $(wc -w <<<"$pids") processes (Ray head + worker node, MLflow server, their jobs)"
        # shellcheck disable=SC2086
        kill -TERM $pids 2>/dev/null || true
        local deadline=$((SECONDS + 15)) left
        while :; do
            left=""
            for p in $pids; do alive "$p" && left="$left $p"; done
            [[ -z "$left" ]] && break
            if ((SECONDS >= deadline)); then
                log "still running after 15s, killing:$left"
                # shellcheck disable=SC2086
                kill -KILL $left 2>/dev/null || true
                sleep 1
                break
            fi
            sleep 0.5
        done
        # Processes started while we were stopping (a worker respawned by a dying raylet).
        pids=$(cluster_pids | tr '\n' ' ')
        # shellcheck disable=SC2086
        [[ -z "${pids// /}" ]] || kill -KILL $pids 2>/dev/null || true
    fi
    rm -f "$STATE_FILE"
    log "down in $((SECONDS - START))s (logs, MLflow store and artifacts kept in $STATE_DIR)"
    return 0
}

cmd_kill_worker_node() {
    load_state || die "the cluster is not up"
    local pids
    pids=$(worker_node_pids | tr '\n' ' ')
    [[ -n "${pids// /}" ]] || die "the worker node has no processes left"
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    log "worker node killed: $(wc -w <<<"$pids") processes (SIGKILL); the head node's GCS marks it dead shortly"
}

case "$CMD" in
    up) cmd_up ;;
    kill-worker-node) cmd_kill_worker_node ;;
    status) cmd_status ;;
    env) cmd_env ;;
    down) cmd_down ;;
esac
