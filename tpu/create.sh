#!/usr/bin/env bash
# usage: tpu/create.sh [--queued] [--spot] [--no-wait] [--timeout SECONDS]
#
# Create the TPU slice of tpu/config.sh and wait until it is READY. Idempotent: if the slice
# already exists and is READY it says so and exits 0; if it is still being created or queued it
# waits for it.
#
#   --queued           request it through a queued resource (QUEUED=1): waits in Cloud TPU's
#                      queue until capacity is free (`gcloud compute tpus queued-resources`)
#   --spot             Spot capacity (SPOT=1): cheaper, preemptible; see tpu/relaunch.sh
#   --no-wait          return once the request is made
#   --timeout SECONDS  give up waiting after SECONDS (default: wait as long as it takes)
#   -h, --help         this text
#
# Settings (environment or TPU_CONFIG file): TPU_NAME, ZONE, PROJECT, ACCELERATOR,
# RUNTIME_VERSION, QR_NAME, VALID_UNTIL, DATA_DISK; `bash tpu/config.sh` prints them.
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WAIT=1
TIMEOUT=0

parse_args() {
  while (($#)); do
    case "$1" in
      -h | --help) usage_from_header "$0" ;;
      --queued) QUEUED=1 ;;
      --spot) SPOT=1 ;;
      --no-wait) WAIT=0 ;;
      --timeout)
        TIMEOUT="${2:?--timeout needs a number of seconds}"
        shift
        ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
}

# --data-disk flag for DATA_DISK (a disk name in ZONE, or a full resource path).
data_disk_flag() {
  local source="$DATA_DISK" project="$PROJECT"
  [[ -n "$source" ]] || return 0
  if [[ "$source" != */* ]]; then
    if [[ -z "$project" ]]; then
      project="$(gcloud config get-value project 2>/dev/null)"
      [[ -n "$project" ]] || die "DATA_DISK needs PROJECT (or a default gcloud project)"
    fi
    source="projects/$project/zones/$ZONE/disks/$source"
  fi
  echo "--data-disk=source=$source,mode=read-write"
}

spot_note() {
  if [[ "$SPOT" == 1 ]]; then echo ", spot"; fi
}

create_node() {
  local args=(compute tpus tpu-vm create "$TPU_NAME"
    "--accelerator-type=$ACCELERATOR" "--version=$RUNTIME_VERSION")
  local disk
  disk="$(data_disk_flag)"
  if [[ -n "$disk" ]]; then args+=("$disk"); fi
  if [[ "$SPOT" == 1 ]]; then args+=(--spot); fi
  if [[ "$WAIT" != 1 ]]; then args+=(--async); fi
  log "creating $(slice_label), runtime $RUNTIME_VERSION$(spot_note)"
  gc "${args[@]}"
}

create_queued() {
  local args=(compute tpus queued-resources create "$QR_NAME" "--node-id=$TPU_NAME"
    "--accelerator-type=$ACCELERATOR" "--runtime-version=$RUNTIME_VERSION")
  local disk
  disk="$(data_disk_flag)"
  if [[ -n "$disk" ]]; then args+=("$disk"); fi
  if [[ "$SPOT" == 1 ]]; then args+=(--spot); fi
  if [[ -n "$VALID_UNTIL" ]]; then args+=("--valid-until-duration=$VALID_UNTIL"); fi
  log "requesting $(slice_label), runtime $RUNTIME_VERSION$(spot_note)"
  gc "${args[@]}"
}

main() {
  parse_args "$@"
  local state
  state="$(slice_state)"
  case "$state" in
    READY)
      log "$(slice_label) already exists and is READY; nothing to do"
      return 0
      ;;
    PENDING) log "$(slice_label) already exists and is on its way (PENDING)" ;;
    ABSENT)
      if [[ "$QUEUED" == 1 ]]; then create_queued; else create_node; fi
      ;;
    LOST) die "$(slice_label) exists but is $state (preempted or failed): tpu/relaunch.sh recreates it, tpu/delete.sh removes it" ;;
    STOPPED) die "$(slice_label) exists but is stopped: gcloud compute tpus tpu-vm start $TPU_NAME --zone=$ZONE" ;;
    *) die "$(slice_label) exists in state $state; wait, or remove it with tpu/delete.sh" ;;
  esac
  if [[ "$WAIT" == 1 ]]; then
    wait_ready "$TIMEOUT" 120
    log "$(slice_label) is READY; next: tpu/setup.sh"
  fi
}

main "$@"
