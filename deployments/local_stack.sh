#!/usr/bin/env bash
# Start a local Prefect server and a `process` worker for ELSPETH; Ctrl-C stops both.
#
#   deployments/local_stack.sh [--port 4200] [--host 127.0.0.1] [--deploy]
#
# Database: SQLite in $PREFECT_HOME (default: this checkout's .prefect/) unless
# PREFECT_SERVER_DATABASE_CONNECTION_URL is set, e.g. for a server several people share:
#   PREFECT_SERVER_DATABASE_CONNECTION_URL=postgresql+asyncpg://prefect:SECRET@db:5432/prefect
# The worker polls ELSPETH_WORK_POOL (default elspeth-process), created here if missing.
# --deploy also runs deployments/deploy.sh once the server is up.
# Logs: $PREFECT_HOME/server.log and $PREFECT_HOME/worker.log. Telemetry is off.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
host=127.0.0.1
port=${ELSPETH_PREFECT_PORT:-4200}
deploy=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --port) port=$2; shift 2 ;;
        --host) host=$2; shift 2 ;;
        --deploy) deploy=1; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "local_stack.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

export PREFECT_HOME=${PREFECT_HOME:-$root/.prefect}
export ELSPETH_WORK_POOL=${ELSPETH_WORK_POOL:-elspeth-process}
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
# The API URL clients use; 0.0.0.0 is a listen address, not one to connect to.
client_host=$host
[[ $host == 0.0.0.0 ]] && client_host=127.0.0.1
export PREFECT_API_URL="http://$client_host:$port/api"
mkdir -p "$PREFECT_HOME"

uv_bin=$(command -v uv || echo "$HOME/.local/bin/uv")
if [[ -x $uv_bin ]]; then
    python_bin=$(cd "$root" && "$uv_bin" run --frozen python -c 'import sys; print(sys.executable)')
else
    python_bin=$(command -v python3)  # no uv: the active environment
fi
prefect_bin=$(dirname "$python_bin")/prefect

if [[ -n ${PREFECT_SERVER_DATABASE_CONNECTION_URL:-} ]]; then
    # Never print the password.
    database=$(sed -E 's#(://[^:/@]+):[^@]*@#\1:***@#' <<<"$PREFECT_SERVER_DATABASE_CONNECTION_URL")
else
    database="sqlite+aiosqlite:///$PREFECT_HOME/prefect.db (default)"
fi

# Each child leads its own process group (setsid), so stopping it stops its helpers too. The
# worker goes first: a worker whose server is gone retries instead of exiting.
pids=()
alive() {  # running, not a zombie waiting to be reaped
    local stat
    stat=$(cut -d')' -f2 "/proc/$1/stat" 2>/dev/null) || return 1
    [[ ${stat:1:1} != Z ]]
}
stop() {
    trap - EXIT INT TERM
    local pid i
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        pid=${pids[i]}
        kill -TERM -- "-$pid" 2>/dev/null || continue
        for _ in $(seq 1 75); do
            alive "$pid" || break
            sleep 0.2
        done
        kill -KILL -- "-$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    echo "local_stack.sh: stopped"
}
trap stop EXIT
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM

cd "$root"
echo "local_stack.sh: starting the Prefect server on $host:$port (database $database)"
setsid "$prefect_bin" server start --host "$host" --port "$port" --analytics-off \
    >>"$PREFECT_HOME/server.log" 2>&1 </dev/null &
pids+=($!)

healthy=0
for _ in $(seq 1 180); do
    if ! kill -0 "${pids[0]}" 2>/dev/null; then
        echo "local_stack.sh: the server exited; last lines of $PREFECT_HOME/server.log:" >&2
        tail -n 30 "$PREFECT_HOME/server.log" >&2
        exit 1
    fi
    if "$python_bin" -c "import httpx, sys; sys.exit(httpx.get(sys.argv[1], timeout=2).status_code != 200)" \
        "$PREFECT_API_URL/health" 2>/dev/null; then
        healthy=1
        break
    fi
    sleep 1
done
if [[ $healthy -ne 1 ]]; then
    echo "local_stack.sh: the server did not answer $PREFECT_API_URL/health in time" >&2
    exit 1
fi

"$python_bin" -m deployments.setup_work_pool --pool "$ELSPETH_WORK_POOL"
echo "local_stack.sh: starting a process worker on pool $ELSPETH_WORK_POOL"
setsid "$prefect_bin" worker start --pool "$ELSPETH_WORK_POOL" --type process \
    >>"$PREFECT_HOME/worker.log" 2>&1 </dev/null &
pids+=($!)

if [[ $deploy -eq 1 ]]; then
    "$root/deployments/deploy.sh"
fi

cat <<INFO

  Prefect UI:   http://$client_host:$port
  API:          $PREFECT_API_URL
  Logs:         $PREFECT_HOME/server.log, $PREFECT_HOME/worker.log

  In another shell:
    export PREFECT_API_URL=$PREFECT_API_URL
    deployments/deploy.sh
    uv run prefect deployment run run_pipeline/run-pipeline

  Ctrl-C stops the server and the worker (running flow runs are not killed).
INFO

# Return when either process exits (or on Ctrl-C); the trap stops the other.
wait -n "${pids[@]}"
