"""The 13 dataset presets: they load, list, and each reads and tokenises a fixture shaped like it
(its columns, its label set, its task); the first preset of each task family also distils end to
end on its fixture with tiny models (two train steps and an evaluation) — one smoke run per
family keeps the suite's time for tests that can fail in other ways."""

import json
import random
from collections import Counter

import pytest
from transformers import AutoTokenizer

from kdjax.cli import main
from kdjax.config import ConfigError, parse_config
from kdjax.data import build_dataset
from kdjax.models import random_student, save_pretrained
from kdjax.models.config import EncoderConfig
from kdjax.presets import dataset_presets
from kdjax.training import train

WORDS = "the film was a quiet and clever study of loss with great acting but a weak ending".split()
TINY = {
    "init": "random",
    "layers": 1,
    "hidden": 32,
    "heads": 2,
    "intermediate": 64,
    "tokenizer": "all-minilm-l6-v2",
}


def test_the_study_grid():
    presets = dataset_presets()
    assert len(presets) == 13
    assert Counter(p.family for p in presets.values()) == {
        "classification": 4,
        "nli": 3,
        "ner": 3,
        "qa": 3,
    }
    for p in presets.values():
        assert p.data.source == "hub" and p.data.hub.name and p.source and p.split_note
        assert p.metric == ("accuracy" if p.task == "classification" else "f1")
        if p.task != "extractive_qa":
            assert p.data.labels and len(set(p.data.labels)) == len(p.data.labels)
        # Evidence for the source; a repo whose main branch is a loading script is read from
        # the hub's parquet conversion, with a local-files recipe beside it.
        assert p.data.hub.name in p.evidence
        if "loading script" in p.evidence:
            assert p.data.hub.revision == "refs/convert/parquet" and p.local_recipe
    assert presets["mnli"].data.hub.test == "validation_matched"  # matched accuracy
    assert presets["mrqa_nq"].data.hub.filter == {"subset": "NaturalQuestionsShort"}


def test_datasets_json(capsys):
    assert main(["datasets", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 13
    assert all({"name", "task", "metric"} <= set(r) for r in rows)
    assert {r["name"] for r in rows} == set(dataset_presets())


def test_preset_merging_and_errors():
    cfg = parse_config(
        {"data": {"preset": "rte", "limit": {"train": 5}}, "model": TINY, "output_dir": "x"}
    )
    assert cfg.task == "classification" and cfg.data.text_pair_column == "sentence2"
    assert cfg.data.limit.train == 5 and cfg.data.hub.config == "rte"
    with pytest.raises(ConfigError, match="data.preset: unknown preset 'imdb'; allowed: ag_news"):
        parse_config({"data": {"preset": "imdb"}, "model": TINY, "output_dir": "x"})
    with pytest.raises(ConfigError, match="task: 'classification' differs from preset 'squad'"):
        parse_config(
            {
                "task": "classification",
                "data": {"preset": "squad"},
                "model": TINY,
                "output_dir": "x",
            }
        )


def _sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _classification_rows(p, rng, n):
    d = p.data
    rows = []
    for i in range(n):
        row = {
            d.text_column: _sentence(rng, rng.randint(3, 12)),
            d.label_column: d.labels[i % len(d.labels)],
        }
        if d.text_pair_column:
            row[d.text_pair_column] = _sentence(rng, rng.randint(3, 8))
        rows.append(row)
    return rows


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _write_conll(path, labels, rng, n):
    types = sorted({t[2:] for t in labels if t != "O"})
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
        words = [
            w.capitalize() if rng.random() < 0.3 else w
            for w in _sentence(rng, rng.randint(4, 10)).split()
        ]
        tags, i = ["O"] * len(words), 0
        while i < len(words):
            if rng.random() < 0.3:
                t, span = rng.choice(types), rng.randint(1, 2)
                for j in range(i, min(i + span, len(words))):
                    tag = ("B-" if j == i else "I-") + t
                    tags[j] = tag if tag in labels else "B-" + t
                i += span
            i += 1
        lines += [f"{w} NN O {t}" for w, t in zip(words, tags, strict=True)] + [""]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _write_squad(path, rng, n, prefix):
    qas, paragraphs = [], []
    for i in range(n):
        context = _sentence(rng, rng.randint(10, 25)) + f" answer{i} is here."
        answer = f"answer{i}"
        qas = [
            {
                "id": f"{prefix}{i}",
                "question": _sentence(rng, 5) + "?",
                "answers": [{"text": answer, "answer_start": context.index(answer)}],
            }
        ]
        paragraphs.append({"context": context, "qas": qas})
    path.write_text(
        json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]})
    )
    return str(path)


def _fixture(p, tmp_path):
    rng = random.Random(p.name)
    sizes = {"train": 8, "validation": 4, "test": 4}
    if p.task == "classification":
        return {
            s: _write_jsonl(tmp_path / f"{s}.jsonl", _classification_rows(p, rng, n))
            for s, n in sizes.items()
        }
    if p.task == "token_classification":
        return {
            s: _write_conll(tmp_path / f"{s}.conll", p.data.labels, rng, n)
            for s, n in sizes.items()
        }
    return {s: _write_squad(tmp_path / f"{s}.json", rng, n, s) for s, n in sizes.items()}


def _one_per_task() -> set[str]:
    first: dict[str, str] = {}
    for name, p in sorted(dataset_presets().items()):
        first.setdefault(p.task, name)
    return set(first.values())


@pytest.mark.parametrize("name", sorted(dataset_presets()))
def test_preset_distils_on_a_fixture(name, tmp_path, minilm_path):
    p = dataset_presets()[name]
    files = _fixture(p, tmp_path)
    base = EncoderConfig(vocab_size=30522, max_position_embeddings=64)
    teacher = random_student(
        p.task,
        base=base,
        layers=1,
        hidden=32,
        heads=2,
        intermediate=64,
        labels=list(p.data.labels) if p.data.labels else None,
        seed=3,
    )
    save_pretrained(teacher, tmp_path / "teacher")
    data = {"preset": name, "source": "files", "files": files, "max_length": 48}
    if p.task == "extractive_qa":
        data["doc_stride"] = 16
    cfg = parse_config(
        {
            "data": data,
            "model": TINY,
            "teacher": str(tmp_path / "teacher"),
            "kd": {"distance": "kl", "alpha": 0.5, "tau_t": 2.0},
            # One padded shape per model: a single compile of each step (length buckets add more).
            "train": {
                "epochs": 1,
                "batch_size": 4,
                "eval_batch_size": 8,
                "log_every": 1,
                "group_by_length": False,
            },
            "output_dir": str(tmp_path / "out"),
        }
    )
    assert cfg.task == p.task
    if name not in _one_per_task():  # the data path only: columns, labels, tokenisation
        tokenizer = AutoTokenizer.from_pretrained(minilm_path)
        ds = build_dataset(cfg.data, tokenizer, cfg.task, seed=cfg.data.split.seed)
        assert ds.info["examples"] == {"train": 8, "validation": 4, "test": 4}
        assert all(len(enc) >= 4 for enc in ds.splits.values())
        return
    result = train(cfg, progress=False)
    assert result["steps"] >= 2 and result["metric"] == p.metric
    for split in ("validation", "test"):
        assert 0.0 <= result[split][p.metric] <= 1.0
        assert result[split]["loss"] > 0 and 0.0 <= result[split]["agreement"] <= 1.0
    assert result["data"]["examples"]["test"] == 4
