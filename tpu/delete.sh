#!/usr/bin/env bash
# usage: tpu/delete.sh [--yes]
#
# Delete the TPU VM (or, with QUEUED=1, the queued resource and its TPU VM) of tpu/config.sh.
# Idempotent: if it does not exist, says so and exits 0. WORKDIR's bucket or disk is kept.
#
#   --yes        do not ask for confirmation
#   -h, --help   this text
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
  local quiet=()
  while (($#)); do
    case "$1" in
      -h | --help) usage_from_header "$0" ;;
      --yes) quiet=(--quiet) ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  local state
  state="$(slice_state)"
  if [[ "$state" == ABSENT ]]; then
    log "$(slice_label) does not exist; nothing to do"
    return 0
  fi
  log "deleting $(slice_label) (state $state)"
  delete_slice ${quiet[@]+"${quiet[@]}"}
}

main "$@"
