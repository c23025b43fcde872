"""Teachers as a study axis: cached logits are exact, shared, verified and rebuilt when stale."""

import logging
from pathlib import Path

import numpy as np
import pytest
from fixtures import CONLL_LABELS, SENTIMENT, tiny_model
from flax import nnx
from safetensors.numpy import load_file

from kdjax.config import parse_config
from kdjax.models import random_student, save_pretrained
from kdjax.models.config import EncoderConfig
from kdjax.training import grouped, loop, train, train_group
from kdjax.training.run_dir import RunDir

DATA = Path(__file__).parent / "data"
TINY = tiny_model()
TASKS = {
    "classification": (
        {**SENTIMENT, "labels": ["neg", "pos"]},
        ["neg", "pos"],
    ),
    "token_classification": (
        {
            "files": {s: str(DATA / "ner" / f"{s}.conll") for s in ("train", "validation", "test")},
            "labels": CONLL_LABELS,
            "limit": {"train": 16},
        },
        CONLL_LABELS,
    ),
    "extractive_qa": (
        {
            "files": {
                "train": str(DATA / "qa" / "train.json"),
                "validation": str(DATA / "qa" / "dev.json"),
                "test": str(DATA / "qa" / "dev.json"),
            },
            "doc_stride": 16,
        },
        None,
    ),
}


def _teacher(tmp_path, task, labels):
    base = EncoderConfig(vocab_size=30522, max_position_embeddings=64)
    model = random_student(
        task, base=base, layers=1, hidden=32, heads=2, intermediate=64, labels=labels, seed=7
    )
    return str(save_pretrained(model, tmp_path / f"teacher-{task}"))


def _cfg(tmp_path, task, name, **over):
    data, labels = TASKS[task]
    d = {
        "task": task,
        "data": {"source": "files", "max_length": 48, **data},
        "model": TINY,
        "teacher": _teacher(tmp_path, task, labels),
        "kd": {"distance": "kl", "alpha": 0.7, "tau_t": 2.0, "tau_s": 1.0},
        # Equal train and eval batch shapes: the teacher's forward pass then runs on the same
        # shapes in both modes, so not even GEMM blocking can round the two differently (Adam
        # turns 1e-8 gradient noise on near-zero gradients into lr-sized steps).
        "train": {
            "epochs": 1,
            "batch_size": 8,
            "eval_batch_size": 8,
            "learning_rate": 1e-3,
            "group_by_length": False,
            "log_every": 1,
        },
        "cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / name),
    }
    d.update(over)
    return parse_config(d)


def _shuffle_in_place(csv: Path) -> None:
    """The same rows in another order, written to the same path (same size, same lengths)."""
    head, *rows = csv.read_text().splitlines()
    order = np.random.default_rng(0).permutation(len(rows))
    csv.write_text("\n".join([head, *(rows[i] for i in order)]) + "\n")


@pytest.mark.parametrize("task", list(TASKS))
def test_cached_teacher_trains_exactly_like_the_online_teacher(tmp_path, task):
    over = {}
    if task == "classification":
        # Classification also changes its train file in place under a valid cache entry: the
        # cached run must then use the teacher's logits of the new rows, not the stale entry's.
        data = dict(_cfg(tmp_path, task, "x").data.model_dump(mode="json"))
        csv = tmp_path / "train.csv"
        csv.write_text(Path(data["files"]["train"]).read_text())
        over["data"] = {**data, "files": {**data["files"], "train": str(csv)}}
        train(_cfg(tmp_path, task, "before", **over), progress=False)
        _shuffle_in_place(csv)
    cached = train(_cfg(tmp_path, task, "cached", **over), progress=False)
    online = train(_cfg(tmp_path, task, "online", teacher_mode="online", **over), progress=False)
    assert cached["steps"] == online["steps"] >= 2
    a = load_file(str(tmp_path / "cached" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "online" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0, err_msg=k)
    np.testing.assert_allclose(cached["test"]["loss"], online["test"]["loss"], rtol=1e-6)
    assert cached["test"]["agreement"] == online["test"]["agreement"]
    # The cache holds one entry (two after the in-place change) with every split, float32,
    # memory-mappable.
    entries = sorted((tmp_path / "cache").glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    assert len(entries) == (2 if over else 1)
    train_logits = np.load(entries[-1].parent / "train.npy", mmap_mode="r")
    assert train_logits.dtype == np.float32 and train_logits.shape[0] >= 8


def test_cache_is_shared_rebuilt_for_other_tokenisation_and_when_corrupt(tmp_path, caplog):
    cfg = _cfg(tmp_path, "classification", "a")
    train(cfg, progress=False)
    entries = sorted((tmp_path / "cache").glob("*/manifest.json"))
    assert len(entries) == 1
    built = entries[0].stat().st_mtime_ns
    # Another run with the same teacher, data and tokenisation reuses it (another student).
    other = _cfg(tmp_path, "classification", "b", model={**TINY, "layers": 2})
    train(other, progress=False)
    assert sorted((tmp_path / "cache").glob("*/manifest.json")) == entries
    assert entries[0].stat().st_mtime_ns == built
    # Another tokenisation (a max_length that truncates: other rows) never uses it.
    longer = _cfg(tmp_path, "classification", "c")
    longer = parse_config(
        {
            **longer.model_dump(mode="json"),
            "data": {**longer.data.model_dump(mode="json"), "max_length": 8},
        }
    )
    train(longer, progress=False)
    assert len(list((tmp_path / "cache").glob("*/manifest.json"))) == 2
    # A corrupt file is detected, reported and rebuilt.
    npy = entries[0].parent / "train.npy"
    raw = bytearray(npy.read_bytes())
    raw[-5] ^= 0xFF
    npy.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING):
        train(cfg, progress=False)
    assert "sha256 mismatch; rebuilding" in caplog.text


def test_missing_teacher_checkpoint_fails_before_compute(tmp_path):
    teacher_run = tmp_path / "teacher_run"
    (teacher_run / "model").mkdir(parents=True)
    (teacher_run / "checkpoints" / "hs" / "3").mkdir(parents=True)
    save_pretrained(
        random_student(
            "classification", labels=["neg", "pos"], layers=1, hidden=32, heads=2, intermediate=64
        ),
        teacher_run / "model",
    )
    cfg = _cfg(tmp_path, "classification", "s", teacher=str(teacher_run), teacher_checkpoint="ll")
    with pytest.raises(FileNotFoundError, match=r"teacher: .* has no 'll' checkpoint"):
        train(cfg, progress=False)
    assert not (tmp_path / "s").exists()
    plain = _cfg(tmp_path, "classification", "s2", teacher_checkpoint="ll")
    with pytest.raises(ValueError, match=r"teacher_checkpoint: 'll' needs a teacher run directory"):
        train(plain, progress=False)


def _teacher_run(root: Path, task: str, labels) -> tuple[str, dict]:
    """A teacher run directory whose hs and ll checkpoints hold different (random) params, and
    those two models."""
    base = EncoderConfig(vocab_size=30522, max_position_embeddings=64)
    make = lambda seed: random_student(
        task, base=base, layers=1, hidden=32, heads=2, intermediate=64, labels=labels, seed=seed
    )
    models = {"hs": make(7), "ll": make(8)}
    run = RunDir(root / "teacher", {"task": task})
    save_pretrained(models["hs"], run.dir / "model")
    for epoch, which in enumerate(("hs", "ll"), 1):
        run.save_params(which, epoch, nnx.split(models[which])[1])
    run.close({})
    return str(run.dir), models


def _spy_batches(monkeypatch, module) -> list[dict]:
    """Every train batch `module` places on the mesh (before row padding), as numpy."""
    seen, real = [], module.put_batch

    def spy(rows, mesh, size):
        seen.append({k: np.array(v) for k, v in rows.items()})
        return real(rows, mesh, size)

    monkeypatch.setattr(module, "put_batch", spy)
    return seen


@pytest.mark.parametrize("task", ["token_classification", "extractive_qa"])
def test_cached_per_token_logits_are_the_teachers_on_each_trimmed_batch(
    tmp_path, monkeypatch, task
):
    """With group_by_length (the default) batches are cut to length buckets; the cached
    per-position teacher logits each batch carries must be the chosen checkpoint's own
    predictions on exactly those rows and positions, solo and grouped (hs and ll stacked)."""
    teacher, models = _teacher_run(tmp_path, task, TASKS[task][1])
    base = _cfg(tmp_path, task, "x").model_dump(mode="json")
    cfg = lambda name, ckpt: parse_config({
        **base, "teacher": teacher, "teacher_checkpoint": ckpt, "output_dir": str(tmp_path / name),
        "train": {**base["train"], "group_by_length": True},
    })  # fmt: skip
    solo = _spy_batches(monkeypatch, loop)
    train(cfg("solo", "ll"), progress=False)
    group = []
    if task == "token_classification":  # the same trimming code serves both tasks
        group = _spy_batches(monkeypatch, grouped)
        train_group([cfg("g0", "hs"), cfg("g1", "ll")], progress=False)

    def check(rows: dict, logits: np.ndarray, which: str) -> None:
        want = models[which](rows["input_ids"], rows["attention_mask"], rows["token_type_ids"])
        real = rows["attention_mask"].astype(bool)
        assert logits.shape == np.shape(want)
        np.testing.assert_allclose(logits[real], np.asarray(want)[real], atol=2e-5, rtol=1e-4)

    assert len(solo) >= 2 and len(group) in (0, len(solo))
    assert min(r["input_ids"].shape[1] for r in solo) < 48  # some batches were trimmed
    for rows in solo:
        check(rows, rows["teacher_logits"], "ll")
    for rows in group:  # [rows, checkpoints (sorted: hs, ll), seq, C]
        for k, which in enumerate(("hs", "ll")):
            check(rows, rows["teacher_logits"][:, k], which)
