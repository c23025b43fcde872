#!/usr/bin/env bash
# usage: tpu/stop.sh [--worker W] [--timeout SECONDS] [--signal SIG]
#
# Stop what tpu/launch.sh started: send SIGTERM to the launched process group on every worker,
# wait, then SIGKILL what is left. Idempotent: a worker with nothing running says so.
# kdjax resumes from its ledger and last finished epoch, so a stopped study or run can be
# launched again (tpu/launch.sh --last).
#
#   --worker W         only worker W (default: all)
#   --timeout SECONDS  grace period before SIGKILL (default: 30)
#   --signal SIG       first signal (default: TERM)
#   -h, --help         this text
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WORKER=all
TIMEOUT=30
SIGNAL=TERM

parse_args() {
  while (($#)); do
    case "$1" in
      -h | --help) usage_from_header "$0" ;;
      --worker)
        WORKER="${2:?--worker needs a worker number or all}"
        shift
        ;;
      --timeout)
        TIMEOUT="${2:?--timeout needs seconds}"
        shift
        ;;
      --signal)
        SIGNAL="${2:?--signal needs a signal name}"
        shift
        ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  [[ "$TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout: a whole number of seconds"
  [[ "$SIGNAL" =~ ^[A-Z0-9]+$ ]] || die "--signal: a signal name such as TERM or INT"
}

remote_script() {
  remote_exports RUN_STATE_DIR TIMEOUT SIGNAL
  printf '%s\n' "$REMOTE_FUNCTIONS"
  cat <<'REMOTE'
set -euo pipefail
wid="$(worker_id)"
pgid="$(cat "$RUN_STATE_DIR/pgid" 2>/dev/null || true)"
if [[ -z "$pgid" ]] || ! group_alive "$pgid"; then
  echo "worker $wid: nothing running"
  exit 0
fi
date -u +%Y-%m-%dT%H:%M:%SZ >"$RUN_STATE_DIR/stopped"  # relaunch.sh --watch leaves it
stop_group "$pgid" "$TIMEOUT" "$SIGNAL"
REMOTE
}

main() {
  parse_args "$@"
  log "stopping the launched command on worker(s) $WORKER of $TPU_NAME"
  tpu_ssh "$WORKER" "$(remote_script)"
}

main "$@"
