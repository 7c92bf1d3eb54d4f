#!/usr/bin/env bash
# Deploy the repository's prefect.yaml to the Prefect server PREFECT_API_URL points at.
#
#   deployments/deploy.sh                      # every deployment (prefect deploy --all)
#   deployments/deploy.sh --name run-pipeline  # only some (any `prefect deploy` options)
#
# Supplies the two variables prefect.yaml needs when they are unset (ELSPETH_PROJECT_DIR: this
# checkout; ELSPETH_WORK_POOL: elspeth-process), creates the `process` work pool if it is
# missing, then runs `prefect --no-prompt deploy`. Safe to run again after editing prefect.yaml.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export ELSPETH_PROJECT_DIR=${ELSPETH_PROJECT_DIR:-$root}
export ELSPETH_WORK_POOL=${ELSPETH_WORK_POOL:-elspeth-process}
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false

if [[ -z ${PREFECT_API_URL:-} ]]; then
    echo "deploy.sh: PREFECT_API_URL is not set: using the active Prefect profile's server" >&2
    echo "  (for deployments/local_stack.sh: export PREFECT_API_URL=http://127.0.0.1:4200/api)" >&2
fi

uv_bin=$(command -v uv || echo "$HOME/.local/bin/uv")
run=("$uv_bin" run --frozen)
[[ -x $uv_bin ]] || run=()  # no uv: use the active environment

cd "$root"
"${run[@]}" python -m deployments.setup_work_pool --pool "$ELSPETH_WORK_POOL"
if [[ $# -eq 0 ]]; then
    set -- --all
fi
"${run[@]}" prefect --no-prompt deploy "$@"
echo "deployed from $root/prefect.yaml (work pool $ELSPETH_WORK_POOL, project $ELSPETH_PROJECT_DIR)"
