#!/usr/bin/env bash
# usage: tpu/logs.sh [WORKER|all] [-n LINES] [--no-follow] [--id LAUNCH_ID]
#
# Show the log of the last launch (or of --id LAUNCH_ID) on worker WORKER (default: 0), following
# it (tail -F) until Ctrl-C. `all` shows every worker's log, each line prefixed with its worker.
# The logs live on the workers, in $WORKDIR/logs/<launch-id>/worker-<i>.log.
#
#   -n LINES       lines of history to show first (default: 100)
#   --no-follow    print and exit
#   --id ID        an earlier launch
#   -h, --help     this text
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WORKER=0
LINES=100
FOLLOW=1
LAUNCH_ID=""

# shellcheck disable=SC2034  # LAUNCH_ID, FOLLOW and LINES are read by name, in remote_exports
parse_args() {
  while (($#)); do
    case "$1" in
      -h | --help) usage_from_header "$0" ;;
      -n)
        LINES="${2:?-n needs a number}"
        shift
        ;;
      --no-follow) FOLLOW=0 ;;
      --id)
        LAUNCH_ID="${2:?--id needs a launch id}"
        shift
        ;;
      all | [0-9] | [0-9][0-9] | [0-9][0-9][0-9]) WORKER="$1" ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  [[ "$LINES" =~ ^[0-9]+$ ]] || die "-n: a number of lines"
}

remote_script() {
  local prefix=0
  if [[ "$WORKER" == all ]]; then
    prefix=1
  fi
  remote_exports WORKDIR RUN_STATE_DIR LAUNCH_ID LINES FOLLOW
  printf 'export PREFIX=%q\n' "$prefix"
  printf '%s\n' "$REMOTE_FUNCTIONS"
  cat <<'REMOTE'
set -euo pipefail
wid="$(worker_id)"
if [[ -n "$LAUNCH_ID" ]]; then
  log="$WORKDIR/logs/$LAUNCH_ID/worker-$wid.log"
else
  log="$(cat "$RUN_STATE_DIR/log" 2>/dev/null || true)"
fi
if [[ -z "$log" || ! -f "$log" ]]; then
  echo "worker $wid: no log ${log:-(nothing launched yet)}" >&2
  exit 1
fi
tail_args=(-n "$LINES")
if [[ "$FOLLOW" == 1 ]]; then
  tail_args+=(-F)
fi
if [[ "$PREFIX" == 1 ]]; then
  tail "${tail_args[@]}" "$log" | sed -u "s/^/[worker $wid] /"
else
  echo "==> worker $wid: $log <==" >&2
  tail "${tail_args[@]}" "$log"
fi
REMOTE
}

main() {
  parse_args "$@"
  tpu_ssh "$WORKER" "$(remote_script)"
}

main "$@"
