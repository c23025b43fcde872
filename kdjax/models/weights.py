"""Checkpoint weight files as numpy arrays, without PyTorch: safetensors, Flax msgpack and
`pytorch_model.bin` (both torch.save formats), keyed with PyTorch names.

A downloaded checkpoint is untrusted input. A `.bin` file is a pickle, and a pickle can name any
Python callable; the reader here resolves only the tensor-rebuild functions, the storage types
and `collections.OrderedDict`, and refuses anything else by name, so no code runs.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

# Which file of a checkpoint is read, best first (safetensors is the safest and fastest; a Flax
# msgpack needs no unpickling; pytorch_model.bin is the last resort).
WEIGHT_FILES = ("model.safetensors", "flax_model.msgpack", "pytorch_model.bin")
SHARD_INDEXES = {
    "model.safetensors.index.json": "model.safetensors",
    "pytorch_model.bin.index.json": "pytorch_model.bin",
}

# torch storage class name -> numpy dtype ("bfloat16" is widened to float32 after reading).
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafeCheckpoint(ValueError):
    """A pickle in a checkpoint names something other than tensors and plain containers."""


class _Storage:
    """A torch storage's bytes, filled in when the archive (or the legacy stream) is read."""

    def __init__(self, name: str, dtype: np.dtype, numel: int) -> None:
        self.name, self.dtype, self.numel = name, dtype, int(numel)
        self.data: np.ndarray | None = None


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name


class _LazyTensor:
    """What `_rebuild_tensor_v2` returns: a strided view of a storage, made real later."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        if not isinstance(storage, _Storage):
            raise UnsafeCheckpoint("a tensor in the pickle does not point to a storage")
        self.storage, self.offset = storage, int(offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def numpy(self) -> np.ndarray:
        s = self.storage
        if s.data is None:
            raise ValueError(f"storage {s.name!r} has no data in the checkpoint")
        if len(self.size) != len(self.stride) or any(v < 0 for v in self.size + self.stride):
            raise ValueError(f"storage {s.name!r}: bad tensor shape {self.size}/{self.stride}")
        last = self.offset + sum(
            (n - 1) * st for n, st in zip(self.size, self.stride, strict=True) if n
        )
        if self.offset < 0 or (all(self.size) and last >= len(s.data)):
            raise ValueError(
                f"storage {s.name!r}: a tensor of shape {self.size} at offset {self.offset} "
                f"reaches past its {len(s.data)} elements"
            )
        if not all(self.size):
            return np.zeros(self.size, s.data.dtype)
        item = s.data.itemsize
        view = np.lib.stride_tricks.as_strided(
            s.data[self.offset :], self.size, [st * item for st in self.stride], writeable=False
        )
        out = np.array(view)
        if s.dtype == STORAGE_DTYPES["BFloat16Storage"]:
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, *_):
    return _LazyTensor(storage, offset, size, stride)


def _rebuild_tensor(storage, offset, size, stride):
    return _LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    """Resolves only the names in _ALLOWED; storages come from `load_storage`."""

    def __init__(self, f: BinaryIO, where: str, load_storage) -> None:
        super().__init__(f)
        self.where, self.load_storage = where, load_storage

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeCheckpoint(
                f"{self.where}: refused to load: the pickle names the global {module}.{name}, "
                "which is not a tensor or storage type (a checkpoint must hold only tensors). "
                "Use a model.safetensors or flax_model.msgpack copy of this checkpoint instead."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeCheckpoint(f"{self.where}: unexpected persistent id {str(pid)[:80]}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpoint(f"{self.where}: storage of unknown type {storage_type!r}")
        return self.load_storage(str(key), STORAGE_DTYPES[storage_type.name], numel)


def _materialise(obj: Any, where: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise ValueError(
            f"{where}: expected a state dict (name -> tensor), got {type(obj).__name__}"
        )
    out = {}
    for key, value in obj.items():
        if isinstance(value, _LazyTensor):
            out[str(key)] = value.numpy()
        # Non-tensor entries (e.g. a saved step count) are not weights; leave them out.
    return out


def _read_zip(path: Path) -> dict[str, np.ndarray]:
    where = str(path)
    with zipfile.ZipFile(path) as zf:
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkls) != 1:
            raise ValueError(f"{where}: not a torch.save archive (no single data.pkl inside)")
        prefix = pkls[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in zf.namelist() and zf.read(byteorder).strip() != b"little":
            raise ValueError(f"{where}: big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}

        def load_storage(key: str, dtype: np.dtype, numel: int) -> _Storage:
            if key not in storages:
                s = _Storage(key, dtype, numel)
                name = f"{prefix}data/{key}"
                try:
                    raw = zf.read(name)
                except KeyError:
                    raise ValueError(
                        f"{where}: storage {name} is missing from the archive"
                    ) from None
                s.data = np.frombuffer(raw, dtype=dtype, count=len(raw) // dtype.itemsize)
                storages[key] = s
            return storages[key]

        with zf.open(pkls[0]) as f:
            obj = _Unpickler(io.BytesIO(f.read()), where, load_storage).load()
    return _materialise(obj, where)


def _read_legacy(path: Path) -> dict[str, np.ndarray]:
    """The pre-1.6 torch.save stream: magic, protocol, sys info, the pickle, then the storages'
    keys and, for each, an int64 element count followed by its bytes."""
    where = str(path)
    storages: dict[str, _Storage] = {}

    def load_storage(key: str, dtype: np.dtype, numel: int) -> _Storage:
        return storages.setdefault(key, _Storage(key, dtype, numel))

    with path.open("rb") as f:
        try:
            magic = _Unpickler(f, where, load_storage).load()
        except pickle.UnpicklingError:
            magic = None
        if magic != _LEGACY_MAGIC:
            raise ValueError(
                f"{where}: not a torch.save file (neither a zip archive nor the legacy format)"
            )
        _Unpickler(f, where, load_storage).load()  # protocol version
        sys_info = _Unpickler(f, where, load_storage).load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise ValueError(f"{where}: big-endian checkpoints are not supported")
        obj = _Unpickler(f, where, load_storage).load()
        keys = _Unpickler(f, where, load_storage).load()
        for key in keys:
            s = storages.get(str(key))
            if s is None:
                raise ValueError(f"{where}: storage {key!r} is listed but never used")
            (numel,) = struct.unpack("<q", f.read(8))
            raw = f.read(numel * s.dtype.itemsize)
            if len(raw) != numel * s.dtype.itemsize:
                raise ValueError(f"{where}: the file ends inside storage {key!r}")
            s.data = np.frombuffer(raw, dtype=s.dtype)
    return _materialise(obj, where)


def read_torch_bin(path: str | Path) -> dict[str, np.ndarray]:
    """A `torch.save`d state dict as numpy arrays, read without torch (bfloat16 -> float32)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        return _read_zip(path)
    return _read_legacy(path)


def _flax_name(parts: list[str], value: np.ndarray) -> tuple[str, np.ndarray]:
    """A Flax parameter path -> the PyTorch key and layout (Dense kernels are [in, out])."""
    *head, leaf = parts
    if leaf == "kernel":
        return ".".join(head + ["weight"]), np.ascontiguousarray(value.T)
    leaf = {"embedding": "weight", "scale": "weight", "gamma": "weight", "beta": "bias"}.get(
        leaf, leaf
    )
    return ".".join(head + [leaf]), value


def read_flax_msgpack(path: str | Path) -> dict[str, np.ndarray]:
    """A transformers Flax checkpoint (`flax_model.msgpack`), keyed with PyTorch names.

    Its tree mirrors the PyTorch module names (FlaxBertForPreTraining: `bert/embeddings/
    word_embeddings/embedding`, `bert/encoder/layer/0/attention/self/query/kernel`, LayerNorm
    `scale`/`bias`, `cls/...`); msgpack holds only data, so restoring it runs no code.
    """
    from flax.serialization import msgpack_restore

    path = Path(path)
    try:
        tree = msgpack_restore(path.read_bytes())
    except Exception as e:  # msgpack raises several types for a damaged file
        raise ValueError(
            f"{path}: not a Flax msgpack checkpoint ({type(e).__name__}: {e})"
        ) from None
    out: dict[str, np.ndarray] = {}

    def walk(node: Any, parts: list[str]) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, parts + [str(k)])
        else:
            key, value = _flax_name(parts, np.asarray(node))
            out[key] = value

    walk(tree, [])
    return out


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def weight_files(names: list[str] | set[str]) -> list[str]:
    """The weight files to read (or download) from a checkpoint's file names: the best single
    format present (all shards of a sharded one), or [] when there is none."""
    names = set(names)
    for single in WEIGHT_FILES:
        stem, suffix = single.rsplit(".", 1)
        shards = sorted(n for n in names if n.startswith(f"{stem}-") and n.endswith("." + suffix))
        if single in names:
            return [single]
        if shards and any(SHARD_INDEXES.get(i) == single for i in names):
            return shards
    return []


READERS = {".safetensors": read_safetensors, ".msgpack": read_flax_msgpack, ".bin": read_torch_bin}


def read_weights(path: str | Path) -> dict[str, np.ndarray]:
    """All weights of a checkpoint directory, from its best available format."""
    path = Path(path)
    files = weight_files([p.name for p in path.iterdir() if p.is_file()])
    if not files:
        raise FileNotFoundError(
            f"{path}: no weights found; expected one of {', '.join(WEIGHT_FILES)} (or shards)"
        )
    out: dict[str, np.ndarray] = {}
    for name in files:
        out.update(READERS[Path(name).suffix](path / name))
    return out
