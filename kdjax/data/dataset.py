"""From a DataConfig to tokenized row arrays per split, with the split policy applied."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from kdjax.config import DataConfig
from kdjax.data import sources
from kdjax.data.sources import Columns
from kdjax.tasks import Encoded, Task, get_task

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Dataset:
    splits: dict[str, Encoded]
    labels: tuple[str, ...]
    info: dict[str, Any]
    # sha256 of each split's tokenised model inputs (`cache.rows_sha256`): what the teacher-logit
    # cache is keyed and checked on.
    rows_sha256: dict[str, str] = dataclasses.field(default_factory=dict)


def _raw_splits(cfg: DataConfig, task: Task) -> tuple[dict[str, Columns], str]:
    """Raw columns per split, and a sentence saying how validation and test were obtained."""
    cols = task.columns(cfg)
    p = cfg.split
    if cfg.source == "rotten_tomatoes":
        if task.name != "classification":
            raise ValueError(
                f"data.source: 'rotten_tomatoes' is a classification set, not for "
                f"task {task.name!r}"
            )
        pool = sources.load_rotten_tomatoes()
        return sources.split_pool(pool, p.validation, p.test, p.seed), (
            f"one unsplit pool: seeded (seed {p.seed}) {p.test:.0%} test, "
            f"{p.validation:.0%} validation, rest train"
        )
    if cfg.source == "files":
        given = {
            s: sources.select_columns(sources.read_table(f), cols, f) for s, f in cfg.files.items()
        }
    else:
        h = cfg.hub
        names = {"train": h.train, "validation": h.validation, "test": h.test}
        given = {}
        for split, name in names.items():
            if name is None:
                continue
            try:
                given[split] = sources.load_hub(
                    h.name, h.config, name, cols, cfg.labels, h.filter, h.revision, h.data_files
                )
            except sources.MissingSplit:
                if split == "train":
                    raise
                log.info("%s has no %r split; the split policy fills it", h.name, name)
    if "test" in given and "validation" in given:
        return given, "the source's own train/validation/test splits"
    if "test" not in given and "validation" in given:
        given["test"] = given.pop("validation")
        policy = "the official validation split as test; "
    elif "test" in given:
        policy = "the source's test split; "
    else:
        split = sources.split_pool(given["train"], p.validation, p.test, p.seed)
        return split, f"train only: seeded (seed {p.seed}) test and validation slices of it"
    train = given["train"]
    n = len(next(iter(train.values())))
    order = np.random.default_rng(p.seed).permutation(n)
    n_val = round(n * p.validation)
    given["validation"] = sources.take(train, order[:n_val])
    given["train"] = sources.take(train, order[n_val:])
    slice_ = f"a seeded (seed {p.seed}) {p.validation:.0%} slice of train as validation"
    return given, policy + slice_


def _limit(columns: Columns, limit: int | None, seed: int) -> Columns:
    n = len(next(iter(columns.values())))
    if limit is None or limit >= n:
        return columns
    return sources.take(columns, np.random.default_rng(seed).permutation(n)[:limit])


def build_dataset(
    cfg: DataConfig,
    tokenizer,
    task: str = "classification",
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> Dataset:
    """Load, split, subsample, validate labels and tokenize. Bad data fails before any compute;
    examples that cannot be used (e.g. empty texts) are dropped and counted in `info`.

    With `cache_dir`, the tokenised splits are stored there once (`cache.data_cache`) and later
    builds with the same raw rows, tokenizer and data settings read them back instead of
    tokenising again."""
    from kdjax.data import cache

    t = get_task(task)
    raw, policy = _raw_splits(cfg, t)
    info: dict[str, Any] = {"source": cfg.source, "split_policy": policy}
    if task == "extractive_qa":
        label_set: tuple[str, ...] = ()
    else:
        label_set = cfg.labels or tuple(sorted(set(t.labels_of(raw["train"]))))
        if len(label_set) < 2:
            raise ValueError(f"data: need at least two labels, found {list(label_set)}")
    limits = cfg.limit.model_dump()
    columns = {}
    for i, split in enumerate(sources.SPLITS):
        columns[split] = _limit(raw[split], limits[split], seed + i)
        if not next(iter(columns[split].values())):
            raise ValueError(f"data: split {split!r} has no examples")

    def tokenise() -> dict[str, Encoded]:
        splits: dict[str, Encoded] = {}
        for split in sources.SPLITS:
            try:
                splits[split] = t.encode(columns[split], tokenizer, label_set, cfg)
            except ValueError as e:
                raise ValueError(f"{e} [split {split!r}]") from None
            if not len(splits[split]):
                raise ValueError(
                    f"data: split {split!r} has no usable examples ({splits[split].info})"
                )
        return splits

    if cache_dir is None:
        splits = tokenise()
        digests = {s: cache.rows_sha256(splits[s]) for s in sources.SPLITS}
    else:
        inputs = {
            "task": task,
            "data": cfg.model_dump(mode="json"),
            "seed": seed,
            "labels": list(label_set),
            "tokenizer": cache.tokenizer_id(tokenizer),
            "raw_sha256": {s: cache.columns_sha256(columns[s]) for s in sources.SPLITS},
        }
        arrays, extra = cache.data_cache(cache_dir).get_or_build_extra(
            inputs, lambda: cache.encode(tokenise())
        )
        splits = cache.decode(arrays, extra)
        # Stored with the arrays, whose own sha256 the cache checked on this read.
        digests = {s: extra[s]["rows_sha256"] for s in sources.SPLITS}
    for key in sorted({k for s in splits.values() for k in s.info}):
        info[key] = {s: splits[s].info.get(key, 0) for s in sources.SPLITS}
    for split, enc in splits.items():
        for key, value in enc.info.items():
            if key.startswith("dropped") and value:
                log.warning("%s: %s = %d", split, key, value)
    info["seq_len"] = splits["train"].seq_len
    return Dataset(splits, tuple(label_set), info, digests)
