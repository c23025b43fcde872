"""Data sources, the split policy and tokenization, on shipped fixtures and the offline corpus."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from kdjax.config import DataConfig
from kdjax.data import build_dataset
from kdjax.data.sources import load_rotten_tomatoes, read_table

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


def _files(**files):
    return {k: str(DATA / v) for k, v in files.items()}


def test_files_with_all_splits(tokenizer):
    cfg = DataConfig(
        source="files",
        files=_files(
            train="sentiment_train.csv",
            validation="sentiment_validation.jsonl",
            test="sentiment_test.jsonl",
        ),
        text_column="sentence",
        label_column="sentiment",
        max_length=64,
    )
    ds = build_dataset(cfg, tokenizer)
    assert ds.labels == ("neg", "pos")  # sorted from train when not given
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 48, "validation": 16, "test": 16}
    tr = ds.splits["train"]
    # Padded to the longest example rounded up to 8, never beyond max_length.
    ids = tr.arrays["input_ids"]
    assert ids.shape[1] % 8 == 0 and ids.shape[1] <= 64
    assert ids.dtype == np.int32 and set(np.unique(tr.arrays["labels"])) <= {0, 1}
    first = json.loads((DATA / "sentiment_validation.jsonl").read_text().splitlines()[0])
    ids = tokenizer(first["sentence"])["input_ids"]
    np.testing.assert_array_equal(ds.splits["validation"].arrays["input_ids"][0, : len(ids)], ids)
    assert ds.splits["validation"].arrays["labels"][0] == ds.labels.index(first["sentiment"])
    assert ds.info["split_policy"] == "the source's own train/validation/test splits"


def test_validation_becomes_test_when_no_test(tokenizer):
    cfg = DataConfig(
        source="files",
        files=_files(train="sentiment_train.csv", validation="sentiment_validation.jsonl"),
        text_column="sentence",
        label_column="sentiment",
        split={"validation": 0.25, "seed": 3},
    )
    ds = build_dataset(cfg, tokenizer)
    assert len(ds.splits["test"]) == 16 and len(ds.splits["validation"]) == 12
    assert len(ds.splits["train"]) == 36
    assert "official validation split as test" in ds.info["split_policy"]
    again = build_dataset(cfg, tokenizer)  # deterministic
    np.testing.assert_array_equal(
        again.splits["validation"].arrays["input_ids"], ds.splits["validation"].arrays["input_ids"]
    )


def test_missing_column_and_unknown_label(tokenizer, tmp_path):
    cfg = DataConfig(source="files", files=_files(train="sentiment_train.csv"), max_length=32)
    with pytest.raises(
        ValueError,
        match=r"missing column 'text' \(data.text_column\); columns "
        r"present: sentence, sentiment",
    ):
        build_dataset(cfg, tokenizer)
    cfg = DataConfig(
        source="files",
        files=_files(train="sentiment_train.csv"),
        text_column="sentence",
        label_column="sentiment",
        labels=["neg", "neutral"],
    )
    with pytest.raises(
        ValueError,
        match=r"label 'pos' \(row \d+\) is not in the label set \['neg', 'neutral'\].*"
        r"\[split '\w+'\]",
    ):
        build_dataset(cfg, tokenizer)


def test_empty_texts_are_dropped_and_counted(tokenizer, tmp_path):
    rows = [
        {"text": t, "label": lab}
        for t, lab in [
            ("good", "a"),
            ("", "b"),
            ("bad", "b"),
            ("   ", "a"),
            ("fine", "a"),
            ("meh", "b"),
        ]
    ]
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = DataConfig(source="files", files={"train": str(f), "validation": str(f), "test": str(f)})
    ds = build_dataset(cfg, tokenizer)
    assert ds.info["dropped_empty"] == {"train": 2, "validation": 2, "test": 2}
    assert len(ds.splits["train"]) == 4


def test_bad_jsonl_line_is_located(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a", "label": "x"}\n{"text": oops}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:2: not valid JSON"):
        read_table(f)


def test_offline_rotten_tomatoes(tokenizer):
    pool = load_rotten_tomatoes()
    assert len(pool["label"]) == 12808
    assert set(pool["label"]) == {"fresh", "rotten"}
    cfg = DataConfig(
        source="rotten_tomatoes",
        labels=["rotten", "fresh"],
        max_length=48,
        limit={"train": 64, "validation": 32, "test": 32},
    )
    ds = build_dataset(cfg, tokenizer)
    assert [len(ds.splits[s]) for s in ("train", "validation", "test")] == [64, 32, 32]
    assert ds.splits["train"].seq_len == 48  # critic snippets are longer than 48
    assert ds.info["truncated"]["train"] > 0


def test_hub_source_maps_class_labels(tokenizer, monkeypatch):
    """The hub path, with `datasets.load_dataset` answered locally: ClassLabel ids become names,
    and a dataset without a test split gets its validation split as test."""
    import datasets

    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "positive"]),
        }
    )
    rows = {"train": 40, "validation": 10}
    calls = []

    def fake_load(name, config, split):
        calls.append((name, config, split))
        if split not in rows:
            raise ValueError(f'Unknown split "{split}". Should be one of {list(rows)}.')
        n = rows[split]
        return datasets.Dataset.from_dict(
            {"sentence": [f"text {i}" for i in range(n)], "label": [i % 2 for i in range(n)]},
            features=features,
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    cfg = DataConfig(
        source="hub",
        hub={"name": "glue", "config": "sst2"},
        text_column="sentence",
        split={"validation": 0.25},
    )
    ds = build_dataset(cfg, tokenizer)
    assert ("glue", "sst2", "test") in calls
    assert ds.labels == ("negative", "positive")
    assert [len(ds.splits[s]) for s in ("train", "validation", "test")] == [30, 10, 10]
    cfg = DataConfig(source="hub", hub={"name": "glue", "config": "sst2"}, text_column="idx")
    with pytest.raises(ValueError, match=r"hub dataset glue/sst2\[train\]: missing column 'idx'"):
        build_dataset(cfg, tokenizer)


def _same_encoded(a, b) -> None:
    assert a.keys() == b.keys()
    for split in a:
        x, y = a[split], b[split]
        assert x.arrays.keys() == y.arrays.keys() and x.info == y.info
        for k in x.arrays:
            np.testing.assert_array_equal(x.arrays[k], y.arrays[k], err_msg=f"{split}.{k}")
        assert x.meta.keys() == y.meta.keys()
        for k in x.meta:
            if isinstance(x.meta[k], np.ndarray):
                np.testing.assert_array_equal(x.meta[k], y.meta[k], err_msg=f"{split}.meta.{k}")
            else:
                assert json.dumps(x.meta[k]) == json.dumps(y.meta[k]), f"{split}.meta.{k}"


def test_tokenised_data_cache_is_built_once_per_content(tokenizer, tmp_path, monkeypatch):
    """QA with a stride (windows, offsets, gold answers) is tokenised once, read back equal,
    and tokenised again when the file changes in place (the same questions reordered)."""
    from kdjax.tasks import extractive_qa

    src = json.loads((DATA / "qa" / "train.json").read_text())
    path = tmp_path / "train.json"
    path.write_text(json.dumps(src))
    files = {"train": str(path), "validation": str(DATA / "qa" / "dev.json"),
             "test": str(DATA / "qa" / "dev.json")}  # fmt: skip
    cfg = DataConfig(source="files", files=files, max_length=48, doc_stride=16)
    calls = []
    real = extractive_qa.ExtractiveQA.encode
    monkeypatch.setattr(extractive_qa.ExtractiveQA, "encode",
                        lambda self, *a: calls.append(1) or real(self, *a))  # fmt: skip
    build = lambda: build_dataset(cfg, tokenizer, "extractive_qa", cache_dir=tmp_path / "c")
    fresh = build_dataset(cfg, tokenizer, "extractive_qa")
    first, second = build(), build()
    assert len(calls) == 3 + 3  # fresh, then the cached build; the third read the cache
    _same_encoded(fresh.splits, first.splits)
    _same_encoded(fresh.splits, second.splits)
    assert fresh.rows_sha256 == first.rows_sha256 == second.rows_sha256
    assert fresh.info == second.info
    src["data"].reverse()  # same questions, other order, same path
    path.write_text(json.dumps(src))
    changed = build()
    assert len(calls) == 9 and len(list((tmp_path / "c").glob("*/manifest.json"))) == 2
    assert changed.rows_sha256["train"] != first.rows_sha256["train"]
    assert changed.rows_sha256["test"] == first.rows_sha256["test"]


def _rows(cols) -> Counter:
    return Counter(zip(*(cols[k] for k in sorted(cols)), strict=True))


def _assert_partition(splits: dict, pool: Counter) -> None:
    """train, validation and test are disjoint, non-empty and together exactly the pool."""
    parts = [_rows(splits[s]) for s in ("train", "validation", "test")]
    assert all(parts) and sum(parts, Counter()) == pool


def test_splits_are_disjoint_and_together_the_pool(tmp_path, monkeypatch):
    """For every way a source gives its splits (files: train only, or train + validation;
    hub: the same two layouts; the offline wheel's one pool) the split policy partitions the
    rows it was given."""
    from kdjax.data import dataset, sources
    from kdjax.tasks import get_task

    task = get_task("classification")
    rows = lambda tag, n: {"text": [f"{tag} {i}" for i in range(n)],
                           "label": ["neg", "pos"] * (n // 2)}  # fmt: skip
    given = {"train": rows("train", 40), "validation": rows("validation", 10)}
    for split, cols in given.items():
        lines = ["text,label", *(f"{t},{y}" for t, y in zip(*cols.values(), strict=True))]
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")

    def fake_hub(name, config, split, *args, **kwargs):
        if split not in hub:
            raise sources.MissingSplit(split)
        return hub[split]

    monkeypatch.setattr(sources, "load_hub", fake_hub)
    policy = {"validation": 0.2, "test": 0.25, "seed": 5}
    for layout in (["train"], ["train", "validation"]):
        pool = sum((_rows(given[s]) for s in layout), Counter())
        files = {s: str(tmp_path / f"{s}.csv") for s in layout}
        cfg = DataConfig(source="files", files=files, split=policy)
        _assert_partition(dataset._raw_splits(cfg, task)[0], pool)
        hub = {s: given[s] for s in layout}
        cfg = DataConfig(source="hub", hub={"name": "x/y", "config": None}, split=policy)
        _assert_partition(dataset._raw_splits(cfg, task)[0], pool)
    cfg = DataConfig(source="rotten_tomatoes", split=policy)
    splits = dataset._raw_splits(cfg, task)[0]
    _assert_partition(splits, _rows(load_rotten_tomatoes()))
    assert len(splits["test"]["text"]) == round(12808 * 0.25)
