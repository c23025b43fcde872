"""From a DataConfig to tokenized numpy arrays per split, with the split policy applied."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from kdjax.config import DataConfig
from kdjax.data import sources
from kdjax.data.sources import Columns

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Split:
    """One tokenized split. Arrays are [examples, seq] except `labels` [examples]."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def arrays(self) -> dict[str, np.ndarray]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Dataset:
    splits: dict[str, Split]
    labels: tuple[str, ...]
    info: dict[str, Any]


def _raw_splits(cfg: DataConfig) -> tuple[dict[str, Columns], str]:
    """Raw columns per split, and a sentence saying how validation and test were obtained."""
    cols = {"text": cfg.text_column, "label": cfg.label_column}
    if cfg.text_pair_column:
        cols["text_pair"] = cfg.text_pair_column
    p = cfg.split
    if cfg.source == "rotten_tomatoes":
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
                given[split] = sources.load_hub(h.name, h.config, name, cols)
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
    order = np.random.default_rng(p.seed).permutation(len(train["label"]))
    n_val = round(len(order) * p.validation)
    given["validation"] = sources.take(train, order[:n_val])
    given["train"] = sources.take(train, order[n_val:])
    return (
        given,
        policy + f"a seeded (seed {p.seed}) {p.validation:.0%} slice of train as validation",
    )


def _limit(columns: Columns, limit: int | None, seed: int) -> Columns:
    n = len(columns["label"])
    if limit is None or limit >= n:
        return columns
    return sources.take(columns, np.random.default_rng(seed).permutation(n)[:limit])


def _drop_empty(columns: Columns) -> tuple[Columns, int]:
    keys = [k for k in ("text", "text_pair") if k in columns]
    keep = [
        i
        for i in range(len(columns["label"]))
        if all(isinstance(columns[k][i], str) and columns[k][i].strip() for k in keys)
    ]
    return sources.take(columns, keep), len(columns["label"]) - len(keep)


def _label_ids(labels: list[str], label_set: tuple[str, ...], split: str) -> np.ndarray:
    index = {name: i for i, name in enumerate(label_set)}
    out = np.empty(len(labels), dtype=np.int32)
    for row, name in enumerate(labels):
        if name not in index:
            raise ValueError(
                f"data: label {name!r} in split {split!r} (row {row}) is not in the label set "
                f"{list(label_set)}; fix the data or set data.labels"
            )
        out[row] = index[name]
    return out


def encode(columns: Columns, tokenizer, max_length: int) -> tuple[dict[str, np.ndarray], int]:
    """Tokenize to max_length (padding to the longest example, rounded up to 8, when shorter).
    Returns the arrays and the number of examples that were truncated."""
    pair = columns.get("text_pair")
    full = tokenizer(columns["text"], pair, truncation=False)["input_ids"]
    longest = max(len(ids) for ids in full)
    length = min(max_length, -(-longest // 8) * 8)
    enc = tokenizer(
        columns["text"],
        pair,
        truncation="longest_first",
        max_length=length,
        padding="max_length",
        return_tensors="np",
        return_token_type_ids=True,
    )
    truncated = sum(len(ids) > length for ids in full)
    arrays = {k: enc[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    return arrays, truncated


def build_dataset(cfg: DataConfig, tokenizer, seed: int = 0) -> Dataset:
    """Load, split, subsample, validate labels and tokenize. Fails on bad labels before compute."""
    raw, policy = _raw_splits(cfg)
    info: dict[str, Any] = {"source": cfg.source, "split_policy": policy, "dropped_empty": {}}
    label_set = cfg.labels or tuple(sorted(set(raw["train"]["label"])))
    if len(label_set) < 2:
        raise ValueError(f"data: need at least two labels, found {list(label_set)}")
    limits = cfg.limit.model_dump()
    prepared = {}
    for split in sources.SPLITS:
        cols = _limit(raw[split], limits[split], seed + sources.SPLITS.index(split))
        cols, dropped = _drop_empty(cols)
        if dropped:
            log.warning("%s: dropped %d examples with an empty text", split, dropped)
        info["dropped_empty"][split] = dropped
        if not cols["label"]:
            raise ValueError(f"data: split {split!r} has no examples")
        prepared[split] = (cols, _label_ids(cols["label"], label_set, split))
    splits, info["truncated"], info["examples"] = {}, {}, {}
    for split, (cols, ids) in prepared.items():
        arrays, truncated = encode(cols, tokenizer, cfg.max_length)
        splits[split] = Split(**arrays, labels=ids)
        info["truncated"][split] = truncated
        info["examples"][split] = len(ids)
    info["seq_len"] = int(splits["train"].input_ids.shape[1])
    return Dataset(splits, tuple(label_set), info)
