"""Manifest composition: `include: [other.yaml, ...]` merges other files' keys in.

A value set in two files must agree (the same value twice is fine); anything else is an error
naming the key and both files. Local data file paths are relative to the file naming them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from kdjax.config import ConfigError, read_yaml_mapping


def _absolute_files(raw: dict[str, Any], base: Path) -> None:
    """Local data files are relative to the manifest that names them."""
    for entry in raw.get("datasets") or []:
        if not isinstance(entry, dict):
            continue
        for sec in ("data", "overrides"):
            files = (
                (entry.get(sec) or {}).get("files") if isinstance(entry.get(sec), dict) else None
            )
            if isinstance(files, dict):
                for k, v in files.items():
                    if isinstance(v, str) and not Path(v).is_absolute():
                        files[k] = str((base / v).resolve())


def _read(path: Path, stack: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """The manifest at `path` with its includes merged; plus which file set each key."""
    path = path.resolve()
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"{path}: include cycle: {chain}")
    if not path.is_file():
        where = f" (included from {stack[-1]})" if stack else ""
        raise FileNotFoundError(f"manifest not found: {path}{where}")
    raw = read_yaml_mapping(path)
    includes = raw.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list):
        raise ConfigError(f"{path}: include: expected a list of YAML paths")
    _absolute_files(raw, path.parent)
    merged: dict[str, Any] = {}
    source: dict[str, str] = {}
    for inc in includes:
        data, src = _read(path.parent / inc, (*stack, path))
        _merge_strict(merged, source, data, src, "")
    _merge_strict(merged, source, raw, {"": str(path)}, "")
    return merged, source


def _origin(source: dict[str, str], key: str) -> str:
    while key not in source:
        key = key.rpartition(".")[0]
    return source[key]


def _merge_strict(dst: dict, dsrc: dict, new: dict, nsrc: dict, prefix: str) -> None:
    # A value set in two files must agree; mappings merge key by key, everything else is a leaf.
    for k, v in new.items():
        key = f"{prefix}{k}"
        if k in dst and isinstance(dst[k], dict) and isinstance(v, dict):
            _merge_strict(dst[k], dsrc, v, nsrc, key + ".")
        elif k in dst and dst[k] != v:
            raise ConfigError(
                f"{key}: set differently in {_origin(dsrc, key)} ({dst[k]!r}) and in "
                f"{_origin(nsrc, key)} ({v!r}); set it in one place"
            )
        elif k not in dst:
            dst[k] = copy.deepcopy(v)
            dsrc[key] = _origin(nsrc, key)


def read_composed(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """The manifest at `path` with its includes merged, and the file that set each key."""
    return _read(Path(path), ())
