#!/usr/bin/env bash
# Start a Ray node for east_ds: the head (one per cluster) or a worker that joins it.
#
#   launch/ray_head.sh head   [extra `ray start` args]              # on the head node
#   launch/ray_head.sh worker HEAD_IP:RAY_PORT [extra args]          # on every other node
#   launch/ray_head.sh stop                                          # `ray stop` (kills ALL Ray on this machine)
#
# Extra args go to `ray start` as they are, e.g. `--block` (stay in the foreground; SIGTERM to this process
# shuts the node down and nothing else), `--temp-dir DIR`, `--num-gpus 8`.
#
# Token authentication (Ray 2.60 default) stays on: RAY_AUTH_MODE=token must be set the same way on the head,
# on every worker and on every client (`ray job submit`, `launch/ray_job.sh`), and all of them must hold the same
# token, from (first found) $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token.
# The head creates ~/.ray/auth_token with `ray get-auth-token --generate` if none of them exists; copy that
# file to the workers and clients (or export RAY_AUTH_TOKEN there). `ray start` itself never creates one.
#
# The dashboard (job submission API) listens on DASHBOARD_HOST, 127.0.0.1 by default: submit jobs on the head
# node itself, or through `ssh -L 8265:127.0.0.1:8265 head`. Exposing it is safe only with token auth on.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NODE_IP=${NODE_IP:-127.0.0.1}             # this node's address as the others reach it (127.0.0.1: one machine;
                                          # auto: node_ipv4 of launch/lib.sh, the IPv4 of $NODE_IFACE if set)
RAY_PORT=${RAY_PORT:-6379}                # GCS port of the head
DASHBOARD_HOST=${DASHBOARD_HOST:-127.0.0.1}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}    # job submission API: http://DASHBOARD_HOST:DASHBOARD_PORT
NUM_CPUS=${NUM_CPUS:-}                    # empty: Ray detects
NUM_GPUS=${NUM_GPUS:-}                    # empty: Ray detects
RAY_BIN=${RAY_BIN:-ray}                   # the `ray` of the environment east_ds is installed in
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
export RAY_USAGE_STATS_ENABLED=${RAY_USAGE_STATS_ENABLED:-0}

if [[ "$NODE_IP" == auto ]]; then
  NODE_IP=$(node_ipv4)
fi

role=${1:-}
shift || true

resources=()
[[ -n "$NUM_CPUS" ]] && resources+=(--num-cpus="$NUM_CPUS")
[[ -n "$NUM_GPUS" ]] && resources+=(--num-gpus="$NUM_GPUS")

ensure_token() {
  [[ "$RAY_AUTH_MODE" == token ]] || return 0
  if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then return 0; fi
  if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
    [[ -s "$RAY_AUTH_TOKEN_PATH" ]] || { echo "ray_head.sh: RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH is empty or missing" >&2; exit 2; }
    return 0
  fi
  if [[ ! -s "$HOME/.ray/auth_token" ]]; then
    if [[ "$role" == head ]]; then
      "$RAY_BIN" get-auth-token --generate >/dev/null
      echo "ray_head.sh: generated $HOME/.ray/auth_token; copy it to workers and clients" >&2
    else
      echo "ray_head.sh: token auth is on but no token: set RAY_AUTH_TOKEN or copy the head's ~/.ray/auth_token" >&2
      exit 2
    fi
  fi
}

case "$role" in
  head)
    ensure_token
    exec "$RAY_BIN" start --head \
      --node-ip-address="$NODE_IP" --port="$RAY_PORT" \
      --include-dashboard=true --dashboard-host="$DASHBOARD_HOST" --dashboard-port="$DASHBOARD_PORT" \
      --disable-usage-stats "${resources[@]}" "$@"
    ;;
  worker)
    head_address=${1:?usage: ray_head.sh worker HEAD_IP:RAY_PORT [extra args]}
    shift
    ensure_token
    exec "$RAY_BIN" start --address="$head_address" --node-ip-address="$NODE_IP" \
      --disable-usage-stats "${resources[@]}" "$@"
    ;;
  stop)
    exec "$RAY_BIN" stop "$@"
    ;;
  *)
    sed -n '2,17p' "$0" >&2
    exit 2
    ;;
esac
