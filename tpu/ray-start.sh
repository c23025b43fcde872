#!/usr/bin/env bash
# usage: tpu/ray-start.sh [--stop | --restart] [--port PORT] [--dashboard-host HOST]
#
# Start a Ray cluster on the workers of the TPU slice, by hand (the alternative to
# `ray up tpu/ray-cluster.yaml`): one Ray node per host, the head on worker 0, then every other
# worker joins it at worker 0's internal address. Ray detects the TPU chips of each host
# (resource "TPU", plus "TPU-<type>-head" on worker 0). Idempotent: a running head or an already
# joined worker is left alone. Needs tpu/setup.sh first (ray comes with kdjax's "ray" extra).
#
# Then run the study's driver on worker 0 only, without jax.distributed; each run gets one chip
# of some host and runs alone there (kdjax sets the one-chip TPU environment per task):
#   tpu/launch.sh --worker 0 --no-distributed -- kdjax run experiments/paper.yaml \
#     --workdir /mnt/kdjax/paper --executor ray --address auto --resources '{"TPU": 1}'
#
#   --stop        stop Ray on every worker
#   --restart     stop, then start
#   --port PORT   head port (default: 6379)
#   --dashboard-host HOST   where the Ray dashboard listens (default: 127.0.0.1, this host
#                 only; reach it with `gcloud compute tpus tpu-vm ssh ... -- -L 8265:localhost:8265`)
#   -h, --help    this text
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ACTION=start
PORT=6379
DASHBOARD_HOST=127.0.0.1

# shellcheck disable=SC2034  # DASHBOARD_HOST is read by name, in remote_exports
parse_args() {
  while (($#)); do
    case "$1" in
      -h | --help) usage_from_header "$0" ;;
      --stop) ACTION=stop ;;
      --restart) ACTION=restart ;;
      --port)
        PORT="${2:?--port needs a number}"
        shift
        ;;
      --dashboard-host)
        DASHBOARD_HOST="${2:?--dashboard-host needs an address}"
        shift
        ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  [[ "$PORT" =~ ^[0-9]+$ ]] || die "--port: a number"
}

# ROLE: head (worker 0) or worker (every worker; worker 0 skips itself).
# shellcheck disable=SC2034  # ROLE and HEAD_IP are read by name, in remote_exports
remote_script() {
  local ROLE="$1" HEAD_IP="$2"
  remote_exports VENV_DIR ACTION PORT ROLE HEAD_IP DASHBOARD_HOST
  printf '%s\n' "$REMOTE_FUNCTIONS"
  cat <<'REMOTE'
set -euo pipefail
wid="$(worker_id)"
ray="$VENV_DIR/bin/ray"
if [[ ! -x "$ray" ]]; then
  echo "worker $wid: no ray in $VENV_DIR; run tpu/setup.sh (kdjax's ray extra)" >&2
  exit 1
fi
if [[ "$ACTION" != start ]]; then
  "$ray" stop >/dev/null 2>&1 || true
  echo "worker $wid: ray stopped"
fi
if [[ "$ACTION" == stop ]]; then
  exit 0
fi
if [[ "$ROLE" == head ]]; then
  if "$ray" status --address="$HEAD_IP:$PORT" >/dev/null 2>&1; then
    echo "worker $wid: the Ray head already runs at $HEAD_IP:$PORT"
  else
    "$ray" start --head --port="$PORT" --node-ip-address="$HEAD_IP" --dashboard-host="$DASHBOARD_HOST"
  fi
elif [[ "$wid" != 0 ]]; then
  if pgrep -u "$(id -u)" -x raylet >/dev/null; then
    echo "worker $wid: already part of a Ray cluster"
  else
    "$ray" start --address="$HEAD_IP:$PORT"
  fi
fi
REMOTE
}

main() {
  parse_args "$@"
  if [[ "$ACTION" == stop ]]; then
    tpu_ssh all "$(remote_script worker "")"
    return 0
  fi
  local head_ip
  head_ip="$(gc compute tpus tpu-vm describe "$TPU_NAME" --format='value(networkEndpoints[0].ipAddress)')"
  [[ -n "$head_ip" ]] || die "no internal address for worker 0 of $TPU_NAME"
  if [[ "$ACTION" == restart ]]; then
    ACTION=stop
    tpu_ssh all "$(remote_script worker "")"
    ACTION=start
  fi
  log "Ray head on worker 0 ($head_ip:$PORT)"
  tpu_ssh 0 "$(remote_script head "$head_ip")"
  log "the other workers join it"
  tpu_ssh all "$(remote_script worker "$head_ip")"
  cat >&2 <<EOF
Ray cluster up (head $head_ip:$PORT). Run a study on it (one driver, one run per chip) with:
  tpu/launch.sh --worker 0 --no-distributed -- kdjax run experiments/paper.yaml \\
    --workdir $WORKDIR/paper --executor ray --address auto --resources '{"TPU": 1}'
EOF
}

main "$@"
