"""On-disk caches of arrays built once and shared by every run: teacher logits, tokenised data.

Each entry is computed once and stored under ``root/<key[:16]>/``, where the key is a sha256
of everything that determines it (the caller's ``inputs`` dict plus :data:`FORMAT_VERSION`).
One entry is a directory holding one ``<name>.npy`` per array and a ``manifest.json`` written
last (which may also carry a JSON ``extra`` payload, hashed like the arrays). Entries are
built in a temporary sibling directory and renamed into place, so a killed writer never leaves
a directory that reads as valid; every read checks the manifest and the arrays' sha256.
Concurrent processes serialise check-and-build on a per-key ``flock``, so one builds and the
others wait and then load its result.

`ArrayCache` keeps each array's dtype (object arrays are refused: no pickle); `LogitCache`
stores float32 and refuses non-finite values. The module knows nothing about models: callers
pass the key inputs and a build function.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT_VERSION", "ArrayCache", "CacheError", "LogitCache"]

FORMAT_VERSION = 1

_LOG = logging.getLogger(__name__)
_MANIFEST = "manifest.json"
_CHUNK = 1 << 20
# Array names become file names, so keep them to a safe, non-hidden alphabet.
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_ENTRY_RE = re.compile(r"^[0-9a-f]{16}$")
_TMP_RE = re.compile(r"^\.tmp-([0-9a-f]{16})-\d+-[0-9a-f]+$")
_MISSING = object()


class CacheError(RuntimeError):
    """The cache cannot produce valid logits (bad build output, unusable inputs)."""


def _canonical(inputs: dict) -> str:
    if not isinstance(inputs, dict):
        raise TypeError(f"cache inputs must be a dict, got {type(inputs).__name__}")
    # allow_nan=False: NaN would make equal inputs hash differently from how they compare.
    return json.dumps(inputs, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _normalise(inputs: dict) -> dict:
    """``inputs`` as it will read back from the manifest (tuples become lists, etc.)."""
    return json.loads(_canonical(inputs))


def _diff_fields(a: Any, b: Any) -> list[str]:
    """Top-level (and one nested level of) fields where two input dicts differ."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return []
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, _MISSING), b.get(k, _MISSING)
        if va == vb:
            continue
        if isinstance(va, dict) and isinstance(vb, dict):
            sub = [
                f"{k}.{s}"
                for s in sorted(set(va) | set(vb))
                if va.get(s, _MISSING) != vb.get(s, _MISSING)
            ]
            out.extend(sub or [k])
        else:
            out.append(k)
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of an .npy file, without reading its data."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        return tuple(shape), dtype, f.tell()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _extra_sha256(extra: Any) -> str:
    return hashlib.sha256(_canonical_any(extra).encode()).hexdigest()


def _canonical_any(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


class ArrayCache:
    """A directory of entries of named arrays (plus optional JSON), one per set of key inputs."""

    label = "array cache"

    def __init__(self, root: str | Path, *, label: str | None = None) -> None:
        self.root = Path(root)
        self.label = label or type(self).label  # names the cache in log messages

    # ------------------------------------------------------------------ keys and paths

    @staticmethod
    def key(inputs: dict) -> str:
        """sha256 hex of the canonical JSON of ``inputs`` plus :data:`FORMAT_VERSION`."""
        payload = _canonical({"format": FORMAT_VERSION, "inputs": inputs})
        return hashlib.sha256(payload.encode()).hexdigest()

    def path(self, inputs: dict) -> Path:
        """The entry directory for ``inputs``: ``root / key[:16]``."""
        return self.root / self.key(inputs)[:16]

    def _lock_path(self, key16: str) -> Path:
        return self.root / f"{key16}.lock"

    @contextlib.contextmanager
    def _locked(self, key16: str) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path(key16), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            # Closing the descriptor releases the flock as well.
            os.close(fd)

    # ------------------------------------------------------------------ verification

    def _check(self, entry: Path, key: str, inputs: dict, *, hashes: bool = True) -> str | None:
        """None if ``entry`` is a valid entry for ``inputs`` (normalised), else why not."""
        if not entry.is_dir():
            return "missing"
        manifest_path = entry / _MANIFEST
        if not manifest_path.is_file():
            return "incomplete"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            return "corrupt: unreadable manifest"
        if not isinstance(manifest, dict):
            return "corrupt: unreadable manifest"
        if manifest.get("format") != FORMAT_VERSION:
            return f"format {manifest.get('format')!r} != {FORMAT_VERSION}"
        if manifest.get("inputs") != inputs:
            fields = _diff_fields(manifest.get("inputs"), inputs)
            detail = f": differs in {', '.join(fields)}" if fields else ""
            return f"built for other inputs{detail}"
        if manifest.get("key") != key:
            return "corrupt: manifest key mismatch"
        arrays = manifest.get("arrays")
        if not isinstance(arrays, dict) or not arrays:
            return "corrupt: manifest lists no arrays"
        if "extra" in manifest:
            try:
                if _extra_sha256(manifest["extra"]) != manifest.get("extra_sha256"):
                    return "corrupt: extra sha256 mismatch"
            except (TypeError, ValueError):
                return "corrupt: unreadable extra"
        for name, meta in arrays.items():
            reason = self._check_array(entry, name, meta, hashes=hashes)
            if reason is not None:
                return reason
        return None

    @staticmethod
    def _check_array(entry: Path, name: str, meta: Any, *, hashes: bool) -> str | None:
        label = f"array {name!r}"
        try:
            file = meta["file"]
            shape = tuple(meta["shape"])
            dtype = np.dtype(meta["dtype"])
            digest = meta["sha256"]
        except (KeyError, TypeError, ValueError):
            return f"corrupt: {label} has a malformed manifest record"
        # A file name with a path separator would let a manifest point outside the entry.
        if not isinstance(file, str) or not _NAME_RE.match(file):
            return f"corrupt: {label} has a bad file name"
        path = entry / file
        if not path.is_file():
            return f"corrupt: {label} file missing"
        try:
            got_shape, got_dtype, offset = _npy_header(path)
        except (OSError, ValueError):
            return f"corrupt: {label} unreadable header"
        if got_shape != shape or got_dtype != dtype:
            got, want = f"{got_dtype}{list(got_shape)}", f"{dtype}{list(shape)}"
            return f"corrupt: {label} is {got}, manifest says {want}"
        # Cheap size check first, so truncation is reported as such without hashing.
        expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        size = path.stat().st_size
        if size != expected:
            return f"corrupt: {label} file is {size} bytes, expected {expected} (truncated?)"
        if hashes and _sha256_file(path) != digest:
            return f"corrupt: {label} sha256 mismatch"
        return None

    def verify(self, inputs: dict) -> str | None:
        """None if a valid entry for ``inputs`` exists, else a short reason string."""
        key = self.key(inputs)
        return self._check(self.root / key[:16], key, _normalise(inputs))

    # ------------------------------------------------------------------ reading and building

    @staticmethod
    def _load(entry: Path) -> tuple[dict[str, np.ndarray], Any]:
        manifest = json.loads((entry / _MANIFEST).read_text())
        arrays = {
            name: np.load(entry / meta["file"], mmap_mode="r", allow_pickle=False)
            for name, meta in manifest["arrays"].items()
        }
        return arrays, manifest.get("extra")

    def get_or_build(
        self,
        inputs: dict,
        build: Callable[[], dict[str, np.ndarray]],
        *,
        log: Callable[[str], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Return the cached arrays for ``inputs`` (read-only memory maps), building them with
        ``build()`` when missing, stale or corrupt.

        A stale or corrupt entry is reported through ``log`` (default: this module's logger at
        warning level) before it is replaced.
        """
        return self.get_or_build_extra(inputs, lambda: (build(), None), log=log)[0]

    def get_or_build_extra(
        self,
        inputs: dict,
        build: Callable[[], tuple[dict[str, np.ndarray], Any]],
        *,
        log: Callable[[str], None] | None = None,
    ) -> tuple[dict[str, np.ndarray], Any]:
        """As `get_or_build`, for a ``build()`` that returns (arrays, extra): ``extra`` is JSON
        data stored (and checked) with the arrays; returns (arrays, extra)."""
        log = log if log is not None else _LOG.warning
        key = self.key(inputs)
        norm = _normalise(inputs)
        entry = self.root / key[:16]

        # Fast path without the lock: entries are immutable once renamed into place, and
        # open memory maps survive a concurrent removal, so a valid entry can be read freely.
        if self._check(entry, key, norm) is None:
            try:
                return self._load(entry)
            except (OSError, ValueError, KeyError):
                pass  # removed or replaced under us; settle it under the lock

        with self._locked(key[:16]):
            # Another process may have built (or repaired) it while this one waited.
            reason = self._check(entry, key, norm)
            if reason is None:
                return self._load(entry)
            if reason == "missing":
                _LOG.info("%s %s: missing; building", self.label, entry)
            else:
                log(f"{self.label} {entry}: {reason}; rebuilding")
            self._clean_stale(key[:16])
            if entry.exists():
                self._discard(entry)
            self._build(entry, key, norm, build)
            return self._load(entry)

    def _build(
        self, entry: Path, key: str, inputs: dict, build: Callable[[], tuple[dict, Any]]
    ) -> None:
        built, extra = build()
        arrays = self._validated(built)
        tmp = self.root / f".tmp-{key[:16]}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            records: dict[str, dict[str, Any]] = {}
            total = 0
            for name, arr in arrays.items():
                file = f"{name}.npy"
                path = tmp / file
                with open(path, "wb") as f:
                    np.save(f, arr, allow_pickle=False)
                    f.flush()
                    os.fsync(f.fileno())
                total += path.stat().st_size
                records[name] = {
                    "file": file,
                    "shape": list(arr.shape),
                    "dtype": arr.dtype.str,
                    "sha256": _sha256_file(path),
                }
            manifest = {
                "format": FORMAT_VERSION,
                "key": key,
                "inputs": inputs,
                "arrays": records,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "bytes": total,
            }
            if extra is not None:
                manifest["extra"] = json.loads(_canonical_any(extra))
                manifest["extra_sha256"] = _extra_sha256(manifest["extra"])
            # The manifest goes last: a directory without one is never taken as an entry.
            with open(tmp / _MANIFEST, "w") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            try:
                os.rename(tmp, entry)
            except OSError as e:
                # Another host on a shared filesystem without working flock got there first.
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                if self._check(entry, key, inputs) is not None:
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(self.root)

    def _validated(self, arrays: Any) -> dict[str, np.ndarray]:
        if not isinstance(arrays, dict) or not arrays:
            raise CacheError(f"{self.label} build must return a non-empty dict of arrays")
        out = {}
        for name, arr in arrays.items():
            if not isinstance(name, str) or not _NAME_RE.match(name) or name == "manifest":
                raise CacheError(f"{self.label}: array name {name!r} is not a safe file name")
            out[name] = self._prepared(name, arr)
        return out

    @staticmethod
    def _prepared(name: str, arr: Any) -> np.ndarray:
        a = np.ascontiguousarray(arr)
        if a.dtype.hasobject:
            raise CacheError(f"array {name!r} holds Python objects; only plain dtypes are cached")
        return a

    def _discard(self, entry: Path) -> None:
        """Remove an entry; renaming it aside first keeps a concurrent reader from seeing a
        half-deleted directory under the entry's name."""
        bad = self.root / f".bad-{entry.name}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.rename(entry, bad)
        except FileNotFoundError:
            return
        shutil.rmtree(bad, ignore_errors=True)

    def _clean_stale(self, held_key16: str) -> None:
        """Remove temporary directories left by writers that died before renaming.

        A writer holds its key's lock until the rename, so a ``.tmp-<key16>-*`` directory is
        abandoned when that lock is free (or is this process's own held lock). A dead writer's
        lock is released by the kernel, so this covers dead pids; unlike an age or pid test it
        never disturbs a long build, nor one running on another host sharing the directory.
        ``.bad-*`` directories are leftovers of an interrupted removal and always go.
        """
        try:
            children = list(self.root.iterdir())
        except FileNotFoundError:
            return
        for child in children:
            if child.name.startswith(".bad-"):
                shutil.rmtree(child, ignore_errors=True)
                continue
            m = _TMP_RE.match(child.name)
            if m is None:
                continue
            key16 = m.group(1)
            if key16 == held_key16 or self._lock_free(key16):
                shutil.rmtree(child, ignore_errors=True)

    def _lock_free(self, key16: str) -> bool:
        lock = self._lock_path(key16)
        if not lock.exists():
            return True
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return False
            raise
        finally:
            os.close(fd)
        return True

    # ------------------------------------------------------------------ housekeeping

    def entries(self, *, hashes: bool = True) -> list[dict]:
        """Manifests (plus ``path``) of the valid entries, for status displays.

        ``hashes=False`` skips the sha256 pass for a quick listing of large caches.
        """
        if not self.root.is_dir():
            return []
        out = []
        for entry in sorted(self.root.iterdir()):
            if not _ENTRY_RE.match(entry.name) or not entry.is_dir():
                continue
            try:
                manifest = json.loads((entry / _MANIFEST).read_text())
                inputs = manifest["inputs"]
                key = self.key(inputs)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if key[:16] != entry.name:
                continue
            if self._check(entry, key, inputs, hashes=hashes) is None:
                out.append({**manifest, "path": str(entry)})
        return out

    def remove(self, inputs: dict) -> bool:
        """Delete the entry for ``inputs``; returns whether there was one."""
        key16 = self.key(inputs)[:16]
        entry = self.root / key16
        if not entry.exists():
            return False
        with self._locked(key16):
            existed = entry.exists()
            self._discard(entry)
        return existed


class LogitCache(ArrayCache):
    """A directory of teacher-logit entries: float32, finite, one per set of key inputs."""

    label = "teacher logit cache"

    @staticmethod
    def _prepared(name: str, arr: Any) -> np.ndarray:
        try:
            # Overflow is reported below as a CacheError, so numpy's warning is noise.
            with np.errstate(over="ignore"):
                a = np.ascontiguousarray(arr, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise CacheError(f"teacher logits {name!r} are not numeric: {e}") from e
        # Checked after the cast, since float64 values beyond float32 range become inf.
        if not np.isfinite(a).all():
            raise CacheError(
                f"teacher logits {name!r} contain NaN/inf; refusing to cache a broken teacher"
            )
        return a
