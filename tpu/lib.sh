#!/usr/bin/env bash
# Helpers shared by the tpu/*.sh scripts. Sourced, not executed; it sources tpu/config.sh.
# shellcheck disable=SC2034  # variables defined here are used by the scripts that source it

TPU_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$TPU_DIR/.." && pwd)"
# shellcheck source=config.sh
source "$TPU_DIR/config.sh"

# Extra flags for ssh/scp, split on whitespace.
read -r -a SSH_EXTRA <<<"$GCLOUD_SSH_FLAGS"
# The file in which launch.sh keeps the last command launched on this TPU.
LAST_LAUNCH_FILE="$STATE_DIR/$TPU_NAME/last-launch"

log() {
  printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2
}

die() {
  log "error: $*"
  exit 1
}

# gcloud with the configured zone and project.
gc() {
  local args=("$@" "--zone=$ZONE")
  if [[ -n "$PROJECT" ]]; then
    args+=("--project=$PROJECT")
  fi
  gcloud "${args[@]}"
}

# Run a command on one worker ("0", "1", ...) or on all of them ("all").
tpu_ssh() {
  local worker="$1" command="$2"
  gc compute tpus tpu-vm ssh "$TPU_NAME" "--worker=$worker" "--command=$command" \
    ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"}
}

# Copy local files to the same path on every worker: tpu_scp_all SRC... DEST.
tpu_scp_all() {
  local args=("$@")
  local dest="${args[${#args[@]} - 1]}"
  unset "args[${#args[@]}-1]"
  gc compute tpus tpu-vm scp "${args[@]}" "$TPU_NAME:$dest" --worker=all \
    ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"}
}

# `describe` a TPU resource and print one field; print nothing if it does not exist.
# Any other failure (no credentials, no permission, wrong project) is an error.
describe_field() {
  local kind="$1" name="$2" format="$3" out err
  err="$(mktemp)"
  if out="$(gc compute tpus "$kind" describe "$name" "--format=$format" 2>"$err")"; then
    rm -f "$err"
    printf '%s\n' "$out"
    return 0
  fi
  if grep -qiE 'not[_ ]?found|was not found' "$err"; then
    rm -f "$err"
    return 0
  fi
  cat "$err" >&2
  rm -f "$err"
  log "error: cannot describe $kind $name"
  return 1
}

node_state() {
  describe_field tpu-vm "$TPU_NAME" 'value(state)'
}

queued_state() {
  describe_field queued-resources "$QR_NAME" 'value(state.state)'
}

# The state of the slice, folded into one word:
#   ABSENT    nothing to use, nothing to clean up
#   PENDING   being created, provisioned, queued or repaired: wait
#   READY     usable
#   LOST      preempted, suspended, failed or terminated: delete and create again
#   STOPPED   stopped by someone: start it again
#   DELETING  on its way out: wait, then create
#   OTHER:<s> anything else (reported as is)
slice_state() {
  local qr="" node
  if [[ "$QUEUED" == 1 ]]; then
    qr="$(queued_state)" || return 1
    case "$qr" in
      "") echo ABSENT && return 0 ;;
      ACTIVE) ;;
      CREATING | ACCEPTED | PROVISIONING | WAITING_FOR_RESOURCES) echo PENDING && return 0 ;;
      FAILED | SUSPENDING | SUSPENDED) echo LOST && return 0 ;;
      DELETING) echo DELETING && return 0 ;;
      *) echo "OTHER:$qr" && return 0 ;;
    esac
  fi
  node="$(node_state)" || return 1
  case "$node" in
    "") if [[ -n "$qr" ]]; then echo PENDING; else echo ABSENT; fi ;;
    READY) echo READY ;;
    CREATING | STARTING | RESTARTING | REPAIRING | REIMAGING) echo PENDING ;;
    PREEMPTED | TERMINATED) echo LOST ;;
    STOPPED | STOPPING) echo STOPPED ;;
    DELETING) echo DELETING ;;
    *) echo "OTHER:$node" ;;
  esac
}

# Wait until the slice is READY; fail if it is lost or gone. $1: timeout in seconds (0: none);
# $2: seconds during which ABSENT still counts as on its way (just after a create request).
wait_ready() {
  local timeout="${1:-0}" grace="${2:-0}" start state last=""
  start="$(date +%s)"
  while true; do
    state="$(slice_state)" || return 1
    if [[ "$state" != "$last" ]]; then
      log "$(slice_label): $state"
      last="$state"
    fi
    case "$state" in
      READY) return 0 ;;
      PENDING) ;;
      ABSENT) if (($(date +%s) - start >= grace)); then
        log "error: $(slice_label) does not exist"
        return 1
      fi ;;
      *)
        log "error: $(slice_label) is $state, not on its way to READY"
        return 1
        ;;
    esac
    if ((timeout > 0 && $(date +%s) - start >= timeout)); then
      log "error: $(slice_label) not READY after ${timeout}s"
      return 1
    fi
    sleep "$POLL_SECONDS"
  done
}

# Wait until the slice no longer exists.
wait_absent() {
  local state
  while true; do
    state="$(slice_state)" || return 1
    if [[ "$state" == ABSENT ]]; then return 0; fi
    log "$(slice_label): $state, waiting for it to go"
    sleep "$POLL_SECONDS"
  done
}

# Delete the TPU VM, or the queued resource together with its TPU VM.
delete_slice() {
  local quiet=("$@")
  if [[ "$QUEUED" == 1 ]]; then
    gc compute tpus queued-resources delete "$QR_NAME" --force ${quiet[@]+"${quiet[@]}"}
  else
    gc compute tpus tpu-vm delete "$TPU_NAME" ${quiet[@]+"${quiet[@]}"}
  fi
}

slice_label() {
  if [[ "$QUEUED" == 1 ]]; then
    echo "queued resource $QR_NAME (TPU $TPU_NAME, $ACCELERATOR, $ZONE)"
  else
    echo "TPU $TPU_NAME ($ACCELERATOR, $ZONE)"
  fi
}

# `export NAME=VALUE` lines, shell-quoted, for a script that runs on the workers.
remote_exports() {
  local name
  for name in "$@"; do
    printf 'export %s=%q\n' "$name" "${!name}"
  done
}

# Shell functions for scripts that run on the workers.
# shellcheck disable=SC2016  # expanded on the worker, not here
REMOTE_FUNCTIONS='
worker_id() {
  if [[ -n "${KDJAX_WORKER_ID:-}" ]]; then
    echo "$KDJAX_WORKER_ID"
    return
  fi
  curl -sf --max-time 5 -H "Metadata-Flavor: Google" \
    "http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number" ||
    hostname
}
group_alive() {
  # A member that is not a zombie (a killed process its parent has not reaped yet is gone).
  local pg st
  while read -r pg st; do
    if [[ "$pg" == "$1" && "$st" != Z* ]]; then return 0; fi
  done < <(ps -eo pgid=,stat=)
  return 1
}
stop_group() {
  local pgid="$1" timeout="$2" signal="$3" waited=0
  kill "-$signal" -- "-$pgid" 2>/dev/null || true
  while group_alive "$pgid" && ((waited < timeout)); do
    sleep 1
    waited=$((waited + 1))
  done
  if group_alive "$pgid"; then
    kill -KILL -- "-$pgid" 2>/dev/null || true
    echo "worker $(worker_id): process group $pgid killed after ${timeout}s"
  else
    echo "worker $(worker_id): process group $pgid stopped"
  fi
}
'

# Print the usage text (the header comment of the calling script, between the first line and
# the first line that is not a comment) and exit.
usage_from_header() {
  local script="$1" code="${2:-0}"
  sed -n '2,/^[^#]/{/^#/!q;s/^# \{0,1\}//;p;}' "$script"
  exit "$code"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  echo "usage: source tpu/lib.sh    (helpers for the tpu/*.sh scripts; nothing to run)"
  exit 0
fi
