#!/usr/bin/env bash
# usage: tpu/relaunch.sh [--watch [--once]] [--interval SECONDS] [--no-setup]
#
# Bring a study back after a preemption (or a lost VM): if the slice is gone, PREEMPTED,
# SUSPENDED or FAILED, delete what is left and create it again (tpu/create.sh, honouring
# QUEUED/SPOT), then run tpu/setup.sh and launch the last command again
# (tpu/launch.sh --last --replace). kdjax does the resuming: the study's SQLite ledger and each
# run's checkpoints live under WORKDIR, on storage that outlives the VM, so the relaunched
# `kdjax run` skips finished runs and continues the others from their last finished epoch.
#
#   --watch              keep watching: poll the slice's state every SECONDS and relaunch
#                        whenever it has been preempted or has disappeared, or when it is
#                        READY but the launched command died there (no process left and no
#                        exit status 0, e.g. killed by the OOM killer or a host reboot); stops
#                        when the command exited 0 or was stopped with tpu/stop.sh (runs until
#                        then or Ctrl-C; start it under nohup/tmux/screen on a machine that
#                        stays up)
#   --once               with --watch: one poll, then exit (for cron or a systemd timer)
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
ONCE=0
INTERVAL="$POLL_SECONDS"
SETUP=1

parse_args() {
  while (($#)); do
    case "$1" in
      -h | --help) usage_from_header "$0" ;;
      --watch) WATCH=1 ;;
      --once) ONCE=1 ;;
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
  # A study's driver needs the Ray cluster (idempotent: a running one is left alone).
  if grep -qE 'kdjax(\.cli|\.sweep\.cli)? run ' "$LAST_LAUNCH_FILE"; then
    "$TPU_DIR/ray-start.sh" || return 1
  fi
  "$TPU_DIR/launch.sh" --last --replace || return 1
}

# On each launched worker: alive, exited <status>, stopped (tpu/stop.sh), dead or none.
health_script() {
  remote_exports RUN_STATE_DIR
  printf '%s\n' "$REMOTE_FUNCTIONS"
  cat <<'REMOTE'
wid="$(worker_id)"
pgid="$(cat "$RUN_STATE_DIR/pgid" 2>/dev/null || true)"
if [[ -z "$pgid" ]]; then
  echo "health worker $wid none"
elif group_alive "$pgid"; then
  echo "health worker $wid alive"
elif [[ -f "$RUN_STATE_DIR/stopped" ]]; then
  echo "health worker $wid stopped"
elif [[ -s "$RUN_STATE_DIR/exit-status" ]]; then
  echo "health worker $wid exited $(cat "$RUN_STATE_DIR/exit-status")"
else
  echo "health worker $wid dead"
fi
REMOTE
}

# The launched command on a READY slice, in one word: alive, finished (every worker exited 0
# or was stopped), or dead (some worker's process is gone without a clean exit).
launch_health() {
  local worker=all out
  # shellcheck source=/dev/null
  worker="$(source "$LAST_LAUNCH_FILE" && echo "$LAST_WORKER")"
  out="$(tpu_ssh "$worker" "$(health_script)")" || return 1
  log "$(grep '^health ' <<<"$out" | cut -d' ' -f2- | paste -sd';' -)"
  if grep -qE '^health worker [^ ]+ (dead|none|exited [1-9][0-9]*)$' <<<"$out"; then
    echo dead
  elif grep -q '^health worker [^ ]* alive$' <<<"$out"; then
    echo alive
  else
    echo finished
  fi
}

watch_loop() {
  local state health owed=0
  log "watching $(slice_label) every ${INTERVAL}s (Ctrl-C to stop)"
  while true; do
    health=""
    if ! state="$(slice_state)"; then
      log "could not read the state; trying again in ${INTERVAL}s"
    elif [[ "$owed" == 0 && "$state" == READY ]]; then
      health="$(launch_health)" || health=""
    fi
    if [[ -n "$state" && ("$owed" == 1 || "$health" == dead ||
      ("$state" != READY && "$state" != PENDING)) ]]; then
      if [[ "$health" == dead ]]; then
        log "$(slice_label) is READY but the launched command died: relaunching it"
        SETUP=0
      else
        log "$(slice_label) is $state: relaunching"
        SETUP=1
      fi
      if recover; then
        owed=0
        log "relaunched; watching again"
      else
        owed=1
        log "relaunch failed; trying again in ${INTERVAL}s"
      fi
    elif [[ "$health" == finished ]]; then
      log "the launched command finished (or was stopped); nothing left to watch"
      return 0
    fi
    if [[ "$ONCE" == 1 ]]; then
      return 0
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
