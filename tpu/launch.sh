#!/usr/bin/env bash
# usage: tpu/launch.sh [options] [--] COMMAND [ARG...]
#        tpu/launch.sh --last [--replace]
#
# Start COMMAND in the background (setsid + nohup: it survives the SSH session), from REPO_DIR
# with the kdjax venv active. Each worker writes its log to
# $WORKDIR/logs/<launch-id>/worker-<i>.log; the command is saved here, for tpu/relaunch.sh.
#
# Two layouts:
# - a study (`kdjax run`): ONE driver, on worker 0 (the Ray head, tpu/ray-start.sh), spreading
#   runs over the chips of every host, one run per chip. Launching it on every worker, or with
#   KDJAX_DISTRIBUTED, is refused: each worker would drive the whole study.
#     tpu/ray-start.sh
#     tpu/launch.sh --worker 0 --no-distributed -- kdjax run experiments/paper.yaml \
#       --workdir /mnt/kdjax/paper --executor ray --address auto --resources '{"TPU": 1}'
# - one large run over the whole slice (`kdjax finetune` / `distill`): on every worker, with
#   KDJAX_DISTRIBUTED=1 exported, so that the workers form one JAX program.
#     tpu/launch.sh -- kdjax distill experiments/demo/student_kd.yaml
#
#   --id ID            launch id, names the log folder (default: UTC date-time)
#   --worker W         run on worker W only (default: all)
#   --no-distributed   do not export KDJAX_DISTRIBUTED=1 (the driver of a study)
#   --env VAR=VALUE    also export VAR on the workers (repeatable)
#   --replace          stop what an earlier launch still runs first (otherwise: refuse)
#   --last             launch the last saved command again, with its options
#   -h, --help         this text
set -euo pipefail

# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# LAUNCH_ID, REPLACE and DISTRIBUTED reach the workers through remote_exports.
REPLACE=0
LAUNCH_ID=""
WORKER=all
DISTRIBUTED=1
LAST=0
ENV_PAIRS=()
CMD=()

# shellcheck disable=SC2034  # REPLACE is read by name, in remote_exports
parse_args() {
  while (($#)); do
    case "$1" in
      -h | --help) usage_from_header "$0" ;;
      --id)
        LAUNCH_ID="${2:?--id needs a value}"
        shift
        ;;
      --worker)
        WORKER="${2:?--worker needs a worker number or all}"
        shift
        ;;
      --no-distributed) DISTRIBUTED=0 ;;
      --env)
        [[ "${2:-}" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs VAR=VALUE"
        ENV_PAIRS+=("$2")
        shift
        ;;
      --replace) REPLACE=1 ;;
      --last) LAST=1 ;;
      --)
        shift
        CMD=("$@")
        break
        ;;
      -*) die "unknown option: $1 (see --help)" ;;
      *)
        CMD=("$@")
        break
        ;;
    esac
    shift
  done
}

# NAME=(quoted values...) for the saved-launch file.
array_decl() {
  local name="$1"
  shift
  if (($#)); then
    printf '%s=(%s)\n' "$name" "$(printf '%q ' "$@")"
  else
    printf '%s=()\n' "$name"
  fi
}

save_launch() {
  mkdir -p "$(dirname "$LAST_LAUNCH_FILE")"
  {
    printf 'LAST_WORKER=%q\n' "$WORKER"
    printf 'LAST_DISTRIBUTED=%q\n' "$DISTRIBUTED"
    array_decl LAST_ENV ${ENV_PAIRS[@]+"${ENV_PAIRS[@]}"}
    array_decl LAST_CMD "${CMD[@]}"
  } >"$LAST_LAUNCH_FILE"
}

load_last_launch() {
  ((${#CMD[@]} == 0)) || die "--last takes no command"
  [[ -f "$LAST_LAUNCH_FILE" ]] || die "nothing launched on $TPU_NAME yet ($LAST_LAUNCH_FILE is missing)"
  local LAST_WORKER LAST_DISTRIBUTED LAST_ENV=() LAST_CMD=()
  # shellcheck source=/dev/null
  source "$LAST_LAUNCH_FILE"
  WORKER="$LAST_WORKER"
  DISTRIBUTED="$LAST_DISTRIBUTED"
  ENV_PAIRS=(${LAST_ENV[@]+"${LAST_ENV[@]}"})
  CMD=("${LAST_CMD[@]}")
}

# Whether the command drives a study: `kdjax run`, or the sweep module's `run`.
is_study() {
  local i
  for ((i = 0; i + 1 < ${#CMD[@]}; i++)); do
    case "${CMD[i]}" in
      kdjax | */kdjax | kdjax.cli | kdjax.sweep.cli)
        [[ "${CMD[i + 1]}" == run ]] && return 0
        ;;
    esac
  done
  return 1
}

# A study has one driver: on one worker, not under jax.distributed.
check_study_layout() {
  is_study || return 0
  if [[ "$WORKER" == all || "$DISTRIBUTED" == 1 ]]; then
    die "a study has ONE driver: launch \`kdjax run\` on the Ray head only, without jax.distributed:
  tpu/ray-start.sh
  tpu/launch.sh --worker 0 --no-distributed -- ${CMD[*]} --executor ray --address auto --resources '{\"TPU\": 1}'
(every worker's chips are Ray slots, one run per chip)"
  fi
}

# The script that runs on each worker.
remote_script() {
  remote_exports WORKDIR REPO_DIR VENV_DIR RUN_STATE_DIR LAUNCH_ID REPLACE DISTRIBUTED
  local pair
  for pair in ${ENV_PAIRS[@]+"${ENV_PAIRS[@]}"}; do
    printf 'export %s=%q\n' "${pair%%=*}" "${pair#*=}"
  done
  array_decl CMD "${CMD[@]}"
  printf '%s\n' "$REMOTE_FUNCTIONS"
  cat <<'REMOTE'
set -euo pipefail
wid="$(worker_id)"
mkdir -p "$RUN_STATE_DIR"
if [[ -s "$RUN_STATE_DIR/pgid" ]]; then
  old="$(cat "$RUN_STATE_DIR/pgid")"
  if group_alive "$old"; then
    if [[ "$REPLACE" == 1 ]]; then
      stop_group "$old" 60 TERM
    else
      echo "worker $wid: launch $(cat "$RUN_STATE_DIR/launch-id" 2>/dev/null || true) is still running" \
        "(process group $old): tpu/stop.sh stops it, --replace replaces it" >&2
      exit 3
    fi
  fi
fi
if [[ ! -f "$VENV_DIR/bin/activate" ]]; then
  echo "worker $wid: no venv at $VENV_DIR; run tpu/setup.sh" >&2
  exit 1
fi
logdir="$WORKDIR/logs/$LAUNCH_ID"
mkdir -p "$logdir"
log="$logdir/worker-$wid.log"
rm -f "$RUN_STATE_DIR/pgid" "$RUN_STATE_DIR/exit-status" "$RUN_STATE_DIR/stopped"
if [[ "$DISTRIBUTED" == 1 ]]; then
  export KDJAX_DISTRIBUTED=1
else
  unset KDJAX_DISTRIBUTED
fi
cd "$REPO_DIR"
{
  echo "# launch $LAUNCH_ID, worker $wid, $(hostname), $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# command: $(printf '%q ' "${CMD[@]}")"
} >>"$log"
# A new session (setsid) whose leader records its pid: the process group that stop.sh kills.
setsid nohup bash -c '
  source "$1"
  echo "$$" >"$2"
  shift 2
  "$@"
  rc=$?
  echo "$rc" >"${2%/*}/exit-status"
  echo "# exited with status $rc at $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  exit "$rc"
' kdjax-launch "$VENV_DIR/bin/activate" "$RUN_STATE_DIR/pgid" "${CMD[@]}" >>"$log" 2>&1 </dev/null &
for _ in $(seq 50); do
  if [[ -s "$RUN_STATE_DIR/pgid" ]]; then break; fi
  sleep 0.1
done
echo "$LAUNCH_ID" >"$RUN_STATE_DIR/launch-id"
echo "$log" >"$RUN_STATE_DIR/log"
echo "worker $wid: started, process group $(cat "$RUN_STATE_DIR/pgid" 2>/dev/null || echo '?'), log $log"
REMOTE
}

main() {
  parse_args "$@"
  if [[ "$LAST" == 1 ]]; then
    load_last_launch
  fi
  ((${#CMD[@]} > 0)) || die "no command given (see --help)"
  check_study_layout
  if [[ -z "$LAUNCH_ID" ]]; then
    LAUNCH_ID="$(date -u +%Y%m%d-%H%M%S)"
  fi
  [[ "$LAUNCH_ID" =~ ^[A-Za-z0-9._-]+$ ]] || die "--id: letters, digits, . _ - only"
  log "launch $LAUNCH_ID on worker(s) $WORKER of $TPU_NAME: ${CMD[*]}"
  tpu_ssh "$WORKER" "$(remote_script)"
  save_launch
  local first="$WORKER"
  if [[ "$first" == all ]]; then
    first=0
  fi
  cat >&2 <<EOF
Launched $LAUNCH_ID. Follow it with:
  tpu/logs.sh $first    # worker $first's log (tpu/logs.sh all: every worker)
  tpu/stop.sh      # stop it on every worker
Logs on the workers: $WORKDIR/logs/$LAUNCH_ID/worker-<i>.log
EOF
}

main "$@"
