#!/usr/bin/env bash
# usage: tpu/setup.sh [--ref REF | --worktree] [--force]
#
# Ship the code to every worker of the TPU slice and install it there. Idempotent: each worker
# keeps a stamp of the commit (and install settings) in its venv and skips the install when it
# matches; WORKDIR is mounted again if it is not (e.g. after a restart).
#
# The code travels as a `git archive` tarball, copied with
# `gcloud compute tpus tpu-vm scp --worker=all`, and tpu/worker-setup.sh does the work on each
# worker (venv at VENV_DIR, source at REPO_DIR; see tpu/config.sh).
#
#   --ref REF    commit to ship (default: HEAD)
#   --worktree   ship HEAD plus the uncommitted changes to tracked files
#   --force      reinstall even where the stamp matches
#   -h, --help   this text
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

REF=HEAD
WORKTREE=0
FORCE=0
INSTALL_VARS=(WORKDIR REPO_DIR VENV_DIR RUN_STATE_DIR PYTHON_VERSION NFS_SHARE GCS_BUCKET
  DATA_DISK DATA_DEVICE KDJAX_EXTRAS JAX_SPEC DATA_WHEELS)

parse_args() {
  while (($#)); do
    case "$1" in
      -h | --help) usage_from_header "$0" ;;
      --ref)
        REF="${2:?--ref needs a commit}"
        shift
        ;;
      --worktree) WORKTREE=1 ;;
      --force) FORCE=1 ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
}

# The commit to ship: REF, or (--worktree) a commit of the working tree made by
# `git stash create`, which touches neither the index nor the stash list.
source_commit() {
  local commit
  commit="$(git -C "$REPO_ROOT" rev-parse --verify "${REF}^{commit}")"
  if [[ "$WORKTREE" == 1 ]]; then
    local snapshot
    snapshot="$(git -C "$REPO_ROOT" stash create)"
    if [[ -n "$snapshot" ]]; then
      commit="$snapshot"
    fi
  elif [[ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no)" ]]; then
    log "note: uncommitted changes are not shipped (--worktree ships them)"
  fi
  echo "$commit"
}

main() {
  parse_args "$@"
  local commit tmp tarball remote
  commit="$(source_commit)"
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2064  # expand now: tmp is local
  trap "rm -rf '$tmp'" EXIT
  tarball="$tmp/kdjax-$commit.tar.gz"
  git -C "$REPO_ROOT" archive --format=tar.gz -o "$tarball" "$commit"
  log "shipping ${commit:0:12} ($(du -h "$tarball" | cut -f1)) to every worker of $TPU_NAME"
  tpu_scp_all "$tarball" "$TPU_DIR/worker-setup.sh" /tmp/

  local force_flag=""
  if [[ "$FORCE" == 1 ]]; then
    force_flag="--force"
  fi
  remote="$(
    remote_exports "${INSTALL_VARS[@]}"
    printf 'bash /tmp/worker-setup.sh --tarball %q --commit %q %s\n' \
      "/tmp/$(basename "$tarball")" "$commit" "$force_flag"
  )"
  tpu_ssh all "$remote"
  log "every worker has kdjax ${commit:0:12}; next: tpu/launch.sh -- kdjax run MANIFEST --workdir $WORKDIR/NAME"
}

main "$@"
