"""Hub dataset sources with datasets>=4 and `kdjax check`, offline, on local stand-ins laid out
like the real repos: a parquet-conversion branch ({config}/{split}/0000.parquet, ClassLabel names
in the parquet schema's metadata) loads; a repo holding a loading script gives the clear error."""

import json

import datasets
import pytest
import yaml

from kdjax.check import exit_code
from kdjax.cli import main
from kdjax.data.convert import convert_conll, convert_int_tags, convert_trec
from kdjax.data.sources import load_hub

TREC = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]
CONLL = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "ds_cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))


def _parquet_repo(root, config, splits, features, make_row):
    """The hub's refs/convert/parquet layout: {config}/{split}/0000.parquet."""
    for split, n in splits.items():
        rows = [make_row(i) for i in range(n)]
        ds = datasets.Dataset.from_list(rows, features=datasets.Features(features))
        (root / config / split).mkdir(parents=True)
        ds.to_parquet(str(root / config / split / "0000.parquet"))
    return root


def _trec_repo(root, names=TREC):
    feats = {"text": datasets.Value("string"), "coarse_label": datasets.ClassLabel(names=names)}
    return _parquet_repo(
        root,
        "default",
        {"train": 24, "test": 6},
        feats,
        lambda i: {"text": f"what is thing {i} ?", "coarse_label": i % 6},
    )


def _script_repo(root):
    """A repo whose main branch holds its loading script (CogComp/trec: trec.py)."""
    root.mkdir(parents=True)
    (root / f"{root.name}.py").write_text("import datasets  # a loading script\n")
    (root / "README.md").write_text("---\npretty_name: TREC\n---\n")
    return root


def test_parquet_conversion_loads_and_script_repo_is_explained(tmp_path):
    repo = _trec_repo(tmp_path / "parquet" / "trec")
    cols = {"text": "text", "label": "coarse_label"}
    got = load_hub(str(repo), None, "train", cols, revision="refs/convert/parquet")
    assert got["label"][:7] == TREC + ["ABBR"] and len(got["text"]) == 24
    files = {"train": "default/train/*.parquet", "test": "default/test/*.parquet"}
    assert len(load_hub(str(repo), None, "test", cols, data_files=files)["text"]) == 6
    script = _script_repo(tmp_path / "script" / "trec")
    with pytest.raises(ValueError, match=r"loading script.*revision: refs/convert/parquet"):
        load_hub(str(script), None, "train", cols)


def test_unlabelled_rows_are_refused(tmp_path):
    feats = {
        "sentence": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["negative", "positive"]),
    }
    repo = _parquet_repo(
        tmp_path / "glue",
        "sst2",
        {"test": 4},
        feats,
        lambda i: {"sentence": f"s{i}", "label": -1 if i else 0},
    )
    with pytest.raises(ValueError, match=r"3 label\(s\) of column 'label' are -1, i.e. unlabelled"):
        load_hub(str(repo), None, "test", {"text": "sentence", "label": "label"})
    tags = {
        "tokens": datasets.Sequence(datasets.Value("string")),
        "tags": datasets.Sequence(datasets.Value("int32")),
    }
    repo = _parquet_repo(
        tmp_path / "onto",
        "default",
        {"train": 2},
        tags,
        lambda i: {"tokens": ["a", "b"], "tags": [0, 7 if i else -1]},
    )
    cols = {"tokens": "tokens", "tags": "tags"}
    with pytest.raises(ValueError, match="are -1"):
        load_hub(str(repo), None, "train", cols, labels=tuple("ABCDEFGH"))
    repo = _parquet_repo(
        tmp_path / "onto2",
        "default",
        {"train": 2},
        tags,
        lambda i: {"tokens": ["a", "b"], "tags": [0, 7]},
    )
    with pytest.raises(ValueError, match="class id 7, but data.labels names only 3"):
        load_hub(str(repo), None, "train", cols, labels=("A", "B", "C"))


def test_mrqa_subset_filter_runs_on_batches(tmp_path, monkeypatch):
    feats = {"subset": datasets.Value("string"), "qid": datasets.Value("string")}
    subsets = ["SQuAD", "NaturalQuestionsShort", "TriviaQA-web"]
    repo = _parquet_repo(
        tmp_path / "mrqa",
        "plain_text",
        {"train": 30_000},
        feats,
        lambda i: {"subset": subsets[i % 3], "qid": str(i)},
    )
    calls = []
    real_filter = datasets.Dataset.filter

    def spy(self, function, *a, **kw):
        calls.append(kw)
        return real_filter(self, function, *a, **kw)

    monkeypatch.setattr(datasets.Dataset, "filter", spy)
    got = load_hub(str(repo), None, "train", {"id": "qid"}, where_equal={"subset": "TriviaQA-web"})
    assert got["id"] == [str(i) for i in range(2, 30_000, 3)]
    assert calls == [{"input_columns": ["subset"], "batched": True, "batch_size": 10_000}]


def _manifest(tmp_path, datasets_):
    m = {
        "name": "preflight",
        "datasets": datasets_,
        "teacher": {"model": {"init": "pretrained", "path": "all-minilm-l6-v2"}},
        "students": ["minilm-l1"],
    }
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(m))
    return path


def test_check_offline_on_stand_ins(tmp_path, capsys):
    good = _trec_repo(tmp_path / "ok" / "trec")
    script = _script_repo(tmp_path / "script" / "trec")
    swapped = _trec_repo(tmp_path / "swapped" / "trec", names=TREC[::-1])
    path = _manifest(
        tmp_path,
        [
            {"name": "trec_ok", "preset": "trec", "overrides": {"hub": {"name": str(good)}}},
            {
                "name": "trec_script",
                "preset": "trec",
                "overrides": {"hub": {"name": str(script), "revision": None}},
            },
            {
                "name": "trec_swapped",
                "preset": "trec",
                "overrides": {"hub": {"name": str(swapped)}},
            },
            {"name": "sst2", "preset": "sst2"},
        ],
    )
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    lines = {ln.split(":")[0]: ln for ln in out.splitlines()}
    assert lines["OK         dataset trec_ok"].endswith("splits, columns and labels check out")
    assert "loading script" in lines["FAIL       dataset trec_script"]
    assert (
        "has the classes ['NUM', 'LOC', 'HUM', 'DESC', 'ENTY', 'ABBR'] (in id order) but "
        "data.labels is ['ABBR'" in lines["FAIL       dataset trec_swapped"]
    )
    assert (
        "HF_HUB_OFFLINE is set, and not in the local hub cache" in lines["UNVERIFIED dataset sst2"]
    )
    assert lines["OK         teacher teacher"] and lines["OK         student minilm-l1"]
    assert "Traceback" not in out


def test_check_paper_offline_answers_every_item(capsys):
    code = main(["check", "experiments/paper.yaml"])
    out = capsys.readouterr().out.splitlines()
    items = [ln for ln in out if not ln.startswith("check ")]
    assert len(items) == 13 + 1 + 3 + 1  # datasets, teacher, students, shared tokenizers
    assert all(ln.split()[0] in ("OK", "UNVERIFIED") for ln in items)
    assert code == 3 and out[-1].endswith("not fully verified")
    assert exit_code([]) == 0


def test_check_demo_passes(capsys):
    assert main(["check", "experiments/demo.yaml"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("4 OK -> ready")


def test_converters(tmp_path):
    raw = tmp_path / "TREC_10.label"
    raw.write_bytes(
        "NUM:dist How far is it from Denver to Aspen ?\nLOC:city What county is "
        "Modesto , California in ?\nHUM:desc Who was Galileo ?\n".encode("latin-1")
    )
    assert convert_trec(raw, tmp_path / "test.jsonl") == 3
    rows = [json.loads(ln) for ln in (tmp_path / "test.jsonl").read_text().splitlines()]
    assert rows[0] == {
        "text": "How far is it from Denver to Aspen ?",
        "coarse_label": "NUM",
        "fine_label": "NUM:dist",
    }
    (tmp_path / "bad.label").write_text("nonsense line\n")
    with pytest.raises(ValueError, match=r"bad.label:1: expected 'COARSE:fine"):
        convert_trec(tmp_path / "bad.label", tmp_path / "x.jsonl")
    wnut = tmp_path / "emerging.test.annotated"
    wnut.write_text("Empire\tB-location\nState\tI-location\n\nhi\tO\n")
    assert convert_conll(wnut, tmp_path / "test.conll") == 2
    assert (tmp_path / "test.conll").read_text().startswith("Empire\tB-location\n")
    onto = tmp_path / "train.json"
    onto.write_text(json.dumps({"tokens": ["$", "5"], "tags": [16, 17]}) + "\n")
    from kdjax.presets import dataset_presets

    labels = dataset_presets()["ontonotes5"].data.labels
    assert convert_int_tags(onto, tmp_path / "o.jsonl", labels) == 1
    row = json.loads((tmp_path / "o.jsonl").read_text())
    assert row["ner_tags"] == ["B-MONEY", "I-MONEY"]
    onto.write_text(json.dumps({"tokens": ["a"], "tags": [99]}) + "\n")
    with pytest.raises(ValueError, match="tag 99 is not an id of the 37 labels"):
        convert_int_tags(onto, tmp_path / "o.jsonl", labels)


def test_check_online_reads_only_metadata(tmp_path, monkeypatch):
    """The networked path with the hub answered locally: a student repo laid out like the BERT
    miniatures' main branch is checked from its file list, config.json and vocab.txt (no weights
    downloaded), and a dataset from its first streamed rows and its file sizes."""
    from types import SimpleNamespace

    import huggingface_hub

    from kdjax.check.datasets import check_dataset
    from kdjax.check.models import check_model
    from kdjax.data import sources
    from kdjax.sweep.manifest import Dataset

    repo = tmp_path / "repo"
    repo.mkdir()
    cfg = {
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 40,
        "max_position_embeddings": 64,
    }
    (repo / "config.json").write_text(json.dumps(cfg))
    (repo / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(30)])
    )
    sizes = {
        "config.json": 383,
        "vocab.txt": 231508,
        "pytorch_model.bin": 44_814_408,
        "flax_model.msgpack": 44_780_000,
        "tf_model.h5": 44_900_000,
        "README.md": 4000,
    }
    fetched = []

    def model_info(self, repo_id, files_metadata=False):
        return SimpleNamespace(
            siblings=[SimpleNamespace(rfilename=f, size=n) for f, n in sizes.items()]
        )

    def download(repo_id, filename, **kw):
        fetched.append(filename)
        return str(repo / filename)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    model = {"init": "pretrained", "path": "google/bert_uncased_L-4_H-256_A-4"}
    res, vocab = check_model("student", "bert-l4-h256", model, True, "")
    assert res.status == "OK" and len(vocab) == 35
    assert res.detail.endswith(
        "bert L2/H32, tokenizer BertTokenizer (35 tokens); will download flax_model.msgpack (45 MB)"
    )
    assert sorted(fetched) == ["config.json", "vocab.txt"]

    trec = _trec_repo(tmp_path / "hub" / "trec")
    real_open = sources.open_hub
    monkeypatch.setattr(sources, "open_hub", lambda name, *a, **kw: real_open(str(trec), *a, **kw))
    files = {
        "default/train/0000.parquet": 2_500_000,
        "default/test/0000.parquet": 100_000,
        ".gitattributes": 2000,
    }

    def dataset_info(self, repo_id, revision=None, files_metadata=False):
        assert revision == "refs/convert/parquet"
        return SimpleNamespace(
            siblings=[SimpleNamespace(rfilename=f, size=n) for f, n in files.items()]
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    data = {
        "source": "hub",
        "text_column": "text",
        "label_column": "coarse_label",
        "labels": TREC,
        "hub": {"name": "CogComp/trec", "revision": "refs/convert/parquet", "validation": None},
    }
    res = check_dataset(Dataset("trec", "classification", data), True, "")
    assert res.status == "OK", res.detail
    assert res.detail == (
        "CogComp/trec@refs/convert/parquet: splits, columns and labels check out, download ~3 MB"
    )


def test_check_a_manifest_that_does_not_load(tmp_path, capsys):
    path = _manifest(tmp_path, [{"name": "imdb"}])
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL       manifest ") and "unknown dataset preset 'imdb'" in out


def _hub_cache_repo(cache, repo_id, files):
    """A dataset repo in the hub cache's layout: blobs, refs/main, snapshots/<sha>/ symlinks."""
    import os

    root = cache / ("datasets--" + repo_id.replace("/", "--"))
    sha = "a" * 40
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(sha)
    for i, (rel, src) in enumerate(files.items()):
        blob = root / "blobs" / f"{i:064x}"
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(src.read_bytes())
        link = root / "snapshots" / sha / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def test_check_offline_reads_the_hub_cache(tmp_path):
    from kdjax.check.datasets import check_dataset
    from kdjax.sweep.manifest import Dataset

    good = _trec_repo(tmp_path / "src" / "trec")
    swapped = _trec_repo(tmp_path / "src2" / "trec", names=TREC[::-1])
    cache = tmp_path / "hub_cache"
    _hub_cache_repo(
        cache, "CogComp/trec", {"default/train/0000.parquet": good / "default/train/0000.parquet"}
    )
    _hub_cache_repo(
        cache, "other/trec", {"default/train/0000.parquet": swapped / "default/train/0000.parquet"}
    )
    data = {
        "source": "hub",
        "text_column": "text",
        "label_column": "coarse_label",
        "labels": TREC,
        "hub": {"name": "CogComp/trec", "revision": "refs/convert/parquet"},
    }
    res = check_dataset(Dataset("trec", "classification", data), False, "HF_HUB_OFFLINE is set")
    assert res.status == "OK" and "in the local cache" in res.detail, res.detail
    data["hub"]["name"] = "other/trec"
    res = check_dataset(Dataset("trec", "classification", data), False, "offline")
    assert res.status == "FAIL" and "has the classes ['NUM'" in res.detail
