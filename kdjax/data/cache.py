"""Content fingerprints of data and tokenizers, and the on-disk cache of tokenised datasets.

A study trains ~1,500 runs on a handful of (dataset, tokenizer, max length) combinations;
tokenising SQuAD or MRQA with a stride takes longer than many of those runs. `build_dataset`
therefore stores each tokenised split once (`data_cache`, an `ArrayCache`: atomic, locked,
sha256-verified on every read), keyed by the *content* of the raw rows each split holds after
the split policy and limits, the tokenizer's full definition and the data settings. A file
changed in place (even the same rows reordered) is other content, so it gets a new entry.

The same fingerprints key the teacher-logit cache: `rows_sha256` hashes the model inputs of a
tokenised split, so cached logits are only ever used with the rows they were computed on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from kdjax.tasks.base import MODEL_INPUTS, Encoded

__all__ = ["cache_root", "columns_sha256", "data_cache", "decode", "encode", "rows_sha256",
           "tokenizer_id"]  # fmt: skip


_PER_CALL = ("truncation", "padding")


def data_cache(root: str | Path):
    """The `ArrayCache` of tokenised datasets in `root`: one entry per (raw content,
    tokenizer, data settings, task)."""
    # Imported here: kdjax.training imports the data modules, not the other way round.
    from kdjax.training.logit_cache import ArrayCache

    return ArrayCache(root, label="tokenised data cache")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def columns_sha256(columns: dict[str, list]) -> str:
    """sha256 of raw columns (names, values and row order) as canonical JSON."""
    text = json.dumps(columns, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()


def rows_sha256(enc: Encoded) -> str:
    """sha256 of a tokenised split's model inputs (what the teacher's logits depend on)."""
    h = hashlib.sha256()
    for name in MODEL_INPUTS:
        a = np.ascontiguousarray(enc.arrays[name])
        h.update(f"{name}|{a.shape}|{a.dtype.str}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def tokenizer_id(tokenizer) -> dict[str, Any]:
    """What determines a tokenizer's output: its class, vocabulary and, for fast tokenizers, the
    whole pipeline definition (normaliser, pre-tokeniser, model, post-processor)."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), separators=(",", ":"))
    out: dict[str, Any] = {
        "class": type(tokenizer).__name__,
        "vocab_sha256": hashlib.sha256(vocab.encode()).hexdigest(),
        "lowercase": getattr(tokenizer, "do_lower_case", None),
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Without the truncation/padding state, which each call sets (it is per-call input).
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in _PER_CALL}
        text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        out["pipeline_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    for attr in ("padding_side", "truncation_side"):
        out[attr] = getattr(tokenizer, attr, None)
    return out


def encode(splits: dict[str, Encoded]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Splits as (arrays, JSON extra) for the cache: every numpy array (model inputs, targets
    and array-valued meta) is an array; other meta values and the info counts are JSON."""
    arrays: dict[str, np.ndarray] = {}
    extra: dict[str, Any] = {}
    for split, enc in splits.items():
        meta_json = {}
        for name, value in enc.arrays.items():
            arrays[f"{split}.a.{name}"] = value
        for name, value in enc.meta.items():
            if isinstance(value, np.ndarray):
                arrays[f"{split}.m.{name}"] = value
            else:
                meta_json[name] = value
        extra[split] = {
            "meta": meta_json,
            "info": enc.info,
            "order": list(enc.arrays),
            "rows_sha256": rows_sha256(enc),
        }
    return arrays, json.loads(json.dumps(extra, default=_json_default))


def decode(arrays: dict[str, np.ndarray], extra: dict[str, Any]) -> dict[str, Encoded]:
    """The inverse of `encode` (arrays come back as read-only memory maps)."""
    out = {}
    for split, rec in extra.items():
        enc_arrays = {name: arrays[f"{split}.a.{name}"] for name in rec["order"]}
        meta = dict(rec["meta"])
        prefix = f"{split}.m."
        meta.update({k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)})
        out[split] = Encoded(enc_arrays, meta, dict(rec["info"]))
    return out


def cache_root(cache_dir: str | None, output_dir: str) -> Path:
    """Where a run's tokenised data is cached: `cache_dir/data` when the run sets a cache
    directory (beside its logit entries), else `data_cache/` beside the run's output folder
    (in a study, `WORKDIR/runs/data_cache`, shared by every run)."""
    if cache_dir:
        return Path(cache_dir) / "data"
    return Path(output_dir).absolute().parent / "data_cache"
