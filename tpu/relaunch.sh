#!/usr/bin/env bash
# usage: tpu/relaunch.sh [--watch] [--interval SECONDS] [--no-setup]
#
# Bring a study back after a preemption (or a lost VM): if the slice is gone, PREEMPTED,
# SUSPENDED or FAILED, delete what is left and create it again (tpu/create.sh, honouring
# QUEUED/SPOT), then run tpu/setup.sh and launch the last command again
# (tpu/launch.sh --last --replace). kdjax does the resuming: the study's SQLite ledger and each
# run's checkpoints live under WORKDIR, on storage that outlives the VM, so the relaunched
# `kdjax run` skips finished runs and continues the others from their last finished epoch.
#
#   --watch              keep watching: poll the slice's state every SECONDS and relaunch
#                        whenever it has been preempted or has disappeared (runs until Ctrl-C;
#                        start it under nohup/tmux/screen on a machine that stays up)
#   --interval SECONDS   poll interval for --watch (default: POLL_SECONDS, 30)
#   --no-setup           skip tpu/setup.sh (the VM was not recreated and the code is in place)
#   -h, --help           this text
#
# Without --watch it recovers once, and relaunches even if the slice is healthy (after
# stopping what still runs there).
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WATCH=0
INTERVAL="$POLL_SECONDS"
SETUP=1

parse_args() {
  while (($#)); do
    case "$1" in
      -h | --help) usage_from_header "$0" ;;
      --watch) WATCH=1 ;;
      --interval)
        INTERVAL="${2:?--interval needs seconds}"
        shift
        ;;
      --no-setup) SETUP=0 ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  if [[ "$WATCH" == 1 ]]; then
    [[ "$INTERVAL" =~ ^[0-9]+$ && "$INTERVAL" -gt 0 ]] || die "--interval: a positive number of seconds"
  fi
}

# Make the slice READY again, whatever its state; recreating it if it was lost.
# Every step checks its status: this also runs where `set -e` does not apply (`... || ...`).
ensure_slice() {
  local state
  state="$(slice_state)" || return 1
  case "$state" in
    READY) return 0 ;;
    PENDING)
      wait_ready 0 || return 1
      ;;
    STOPPED)
      log "$(slice_label) is stopped: starting it"
      gc compute tpus tpu-vm start "$TPU_NAME" || return 1
      wait_ready 0 || return 1
      ;;
    LOST | DELETING)
      log "$(slice_label) is $state: deleting it, then creating it again"
      if [[ "$state" == LOST ]]; then
        delete_slice --quiet || return 1
      fi
      wait_absent || return 1
      "$TPU_DIR/create.sh" || return 1
      ;;
    ABSENT)
      log "$(slice_label) does not exist: creating it"
      "$TPU_DIR/create.sh" || return 1
      ;;
    *)
      log "error: $(slice_label) is in state $state; not touching it"
      return 1
      ;;
  esac
  # It was (re)created or restarted: the software has to go on again.
  SETUP=1
}

recover() {
  ensure_slice || return 1
  if [[ "$SETUP" == 1 ]]; then
    "$TPU_DIR/setup.sh" || return 1
  fi
  "$TPU_DIR/launch.sh" --last --replace || return 1
}

watch_loop() {
  local state owed=0
  log "watching $(slice_label) every ${INTERVAL}s (Ctrl-C to stop)"
  while true; do
    if ! state="$(slice_state)"; then
      log "could not read the state; trying again in ${INTERVAL}s"
    elif [[ "$owed" == 1 || ("$state" != READY && "$state" != PENDING) ]]; then
      log "$(slice_label) is $state: relaunching"
      SETUP=1
      if recover; then
        owed=0
        log "relaunched; watching again"
      else
        owed=1
        log "relaunch failed; trying again in ${INTERVAL}s"
      fi
    fi
    sleep "$INTERVAL"
  done
}

main() {
  parse_args "$@"
  [[ -f "$LAST_LAUNCH_FILE" ]] ||
    die "nothing to relaunch: no command launched on $TPU_NAME yet ($LAST_LAUNCH_FILE); use tpu/launch.sh first"
  if [[ "$WATCH" == 1 ]]; then
    watch_loop
  else
    recover || die "relaunch failed"
    log "relaunched on $(slice_label)"
  fi
}

main "$@"
