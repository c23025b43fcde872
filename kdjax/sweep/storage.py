"""Where a study's files live: the shared workdir, the driver's local ledger, the probe.

A study has one driver and many workers. Run directories (checkpoints, logs, the teacher's
logit cache) must be visible to every worker at the same path: a shared mount (NFS such as
Filestore, or a bucket mounted with gcsfuse) or, on one machine, a local folder. The ledger is
a SQLite database in WAL mode, which needs shared memory between its readers and writers, so
SQLite documents that it does not work over a network filesystem
(https://www.sqlite.org/wal.html, "WAL does not work over a network filesystem"). Hence:

- workdir on a local filesystem: the ledger is `WORKDIR/ledger.sqlite`, as always;
- workdir on a network filesystem (NFS, gcsfuse, Lustre, CIFS, ...): the ledger lives on the
  driver's local disk (`KDJAX_LEDGER_DIR`, default `~/.local/state/kdjax/ledgers/...`) and a
  consistent snapshot is published to `WORKDIR/ledger.sqlite` every `publish_every` seconds and
  at the end, for `kdjax status` / `kdjax report` on any machine. A driver that starts without
  its local ledger (a recreated VM) restores it from that snapshot; runs finished after the
  last snapshot run again (runs are idempotent and resume from their checkpoints).

`gs://` workdirs are recognised (never turned into a local folder named `gs:`) but refused for
now: the trainer writes run directories with local file APIs (appending logs, file locks of the
logit cache); mount the bucket with gcsfuse instead (tpu/worker-setup.sh does).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

# Filesystem types (as /proc/mounts names them) on which SQLite's WAL mode is unsafe.
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
    "9p", "afs", "fuse.gcsfuse", "fuse.sshfs", "fuse.s3fs", "fuse.glusterfs", "fuse.juicefs",
    "fuse.cephfs", "fuse.rclone", "fuse.goofys", "fuse.mountpoint-s3",
})  # fmt: skip
LEDGER = "ledger.sqlite"


def is_url(path: str | os.PathLike) -> bool:
    """`gs://bucket/x` and the like: object storage, not a local path."""
    return "://" in str(path)


def absolute(path: str | os.PathLike) -> str:
    """An absolute path as text; a URL stays as given (pathlib would turn `gs://b` into
    `gs:/b`, a local folder)."""
    text = os.fspath(path)
    return text.rstrip("/") if is_url(text) else str(Path(text).resolve())


def check_workdir(path: str | os.PathLike) -> None:
    """Refuse a workdir the study cannot use (see the module doc)."""
    if is_url(path):
        raise ValueError(
            f"--workdir {path}: object storage is not supported as a study's workdir (runs "
            "write logs and locks with local file APIs); mount the bucket with gcsfuse "
            "(GCS_BUCKET in tpu/config.sh: --rename-dir-limit and implicit dirs, as Orbax "
            "needs) and give the mount point, e.g. --workdir /mnt/kdjax/paper"
        )


def fs_type(path: str | os.PathLike, mounts: str = "/proc/mounts") -> str | None:
    """The filesystem type of the mount holding `path` (its nearest existing ancestor), from
    /proc/mounts; None where that cannot be read (not Linux)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    p = p.resolve()
    best, kind = "", None
    try:
        lines = Path(mounts).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = str(p) == point or str(p).startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def on_network_fs(path: str | os.PathLike) -> bool:
    return fs_type(path) in NETWORK_FS


def local_ledger_dir(workdir: str | os.PathLike) -> Path:
    """Where the driver keeps the ledger of a study whose workdir is on a network filesystem."""
    base = os.environ.get("KDJAX_LEDGER_DIR")
    root = Path(base) if base else Path.home() / ".local" / "state" / "kdjax" / "ledgers"
    text = absolute(workdir)
    tag = hashlib.sha256(text.encode()).hexdigest()[:12]
    return root / f"{Path(text).name or 'study'}-{tag}"


class LedgerPlace:
    """The ledger's path for a workdir and, where it is not the workdir's, its publishing."""

    def __init__(self, workdir: str | os.PathLike, publish_every: float = 60.0):
        self.workdir = Path(workdir)
        self.shared = self.workdir / LEDGER
        self.kind = fs_type(self.workdir)
        self.remote = self.kind in NETWORK_FS
        self.dir = local_ledger_dir(workdir) if self.remote else self.workdir
        self.path = self.dir / LEDGER
        self.publish_every = publish_every
        self._last = 0.0

    def restore(self) -> bool:
        """Copy the published snapshot in when the local ledger is missing; returns whether."""
        if not self.remote or self.path.exists() or not self.shared.is_file():
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{LEDGER}.{uuid.uuid4().hex[:8]}")
        shutil.copyfile(self.shared, tmp)
        tmp.replace(self.path)
        return True

    def publish(self, db: sqlite3.Connection, force: bool = False) -> bool:
        """Write a consistent snapshot of `db` to WORKDIR/ledger.sqlite (atomic rename), at
        most every `publish_every` seconds unless `force`; returns whether it wrote."""
        if not self.remote or (not force and time.monotonic() - self._last < self.publish_every):
            return False
        with tempfile.TemporaryDirectory() as tmp:
            snap = Path(tmp) / LEDGER
            dest = sqlite3.connect(snap)
            try:
                db.backup(dest)  # a consistent copy while the driver keeps writing
                dest.execute("PRAGMA journal_mode=DELETE")
            finally:
                dest.close()
            part = self.shared.with_name(f".{LEDGER}.{uuid.uuid4().hex[:8]}.part")
            shutil.copyfile(snap, part)
            part.replace(self.shared)
        self._last = time.monotonic()
        return True


def write_sentinel(workdir: str | os.PathLike) -> tuple[str, str]:
    """A file with a random token in the workdir, for the storage probe: (path, token)."""
    token = uuid.uuid4().hex
    path = Path(workdir) / f".kdjax-probe-{token[:12]}"
    path.write_text(token)
    return str(path), token


def read_sentinel(path: str, token: str) -> str | None:
    """None when `path` holds `token` here; else what is wrong (the probe task's body)."""
    try:
        got = Path(path).read_text()
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    return None if got == token else f"{path} holds another study's probe"


def storage_fix(workdir: str) -> str:
    return (
        f"put --workdir on storage that every worker mounts at the same path ({workdir}): an "
        "NFS share such as Filestore (NFS_SHARE in tpu/config.sh), or a bucket mounted with "
        "gcsfuse (GCS_BUCKET); on Slurm, a shared filesystem"
    )
