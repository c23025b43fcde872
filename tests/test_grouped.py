"""Grouped training: K members in one compiled step end exactly where their solo runs end."""

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures import CONLL_LABELS, tiny_model
from fixtures import SENTIMENT as SHARED_SENTIMENT
from flax import nnx
from safetensors.numpy import load_file

from kdjax.config import parse_config
from kdjax.models import random_student, save_pretrained
from kdjax.models.config import EncoderConfig
from kdjax.training import train
from kdjax.training.grouped import group_key, max_group_size, train_group
from kdjax.training.run_dir import RunDir

DATA = Path(__file__).parent / "data"
TINY = tiny_model()
CONLL = CONLL_LABELS
SENTIMENT = {**SHARED_SENTIMENT, "labels": ["neg", "pos"]}
NER = {
    "files": {s: str(DATA / "ner" / f"{s}.conll") for s in ("train", "validation", "test")},
    "labels": CONLL,
    "limit": {"train": 24},
}
# Members differ in distance, alpha, temperatures, learning rate and teacher checkpoint.
MEMBERS = [
    ({"distance": "ce", "alpha": 0.5, "tau_t": 2.0, "tau_s": 1.0}, 1e-3, "hs"),
    ({"distance": "kl", "alpha": 0.8, "tau_t": 1.0}, 3e-4, "ll"),
    ({"distance": "mse", "alpha": 1.0, "tau_t": 4.0}, 2e-3, "hs"),
]
BLOWUP = ({"distance": "kl", "alpha": 0.5}, 1e30, "ll")


def _teacher_run(root: Path, task: str, labels: list[str]) -> str:
    """A teacher run directory whose hs and ll checkpoints hold different (random) params."""
    base = EncoderConfig(vocab_size=30522, max_position_embeddings=64)
    make = lambda seed: random_student(
        task, base=base, layers=1, hidden=32, heads=2, intermediate=64, labels=labels, seed=seed
    )
    run = RunDir(root / "teacher", {"task": task})
    save_pretrained(make(7), run.dir / "model")
    for epoch, (which, seed) in enumerate((("hs", 7), ("ll", 8)), 1):
        run.save_params(which, epoch, nnx.split(make(seed))[1])
    run.close({})
    return str(run.dir)


def _cfg(root: Path, task: str, data: dict, teacher: str, name: str, kd, lr, ckpt, **train):
    return parse_config(
        {
            "task": task,
            "data": {"source": "files", "max_length": 32, **data},
            "model": TINY,
            "teacher": teacher,
            "teacher_checkpoint": ckpt,
            "kd": kd,
            # Equal train and eval batch shapes and no length grouping: every matmul has the
            # same shape in the solo and the grouped run (Adam magnifies last-bit noise).
            "train": {
                "epochs": 1,
                "batch_size": 8,
                "eval_batch_size": 8,
                "learning_rate": lr,
                "group_by_length": False,
                "log_every": 1,
                **train,
            },
            "cache_dir": str(root / "cache"),
            "output_dir": str(root / name),
        }
    )


def _same_run(group: dict, solo: dict, group_dir: Path, solo_dir: Path) -> None:
    a = load_file(str(group_dir / "model" / "model.safetensors"))
    b = load_file(str(solo_dir / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0, err_msg=k)
    for split in ("validation", "test"):
        assert group[split].keys() == solo[split].keys()
        for m in solo[split]:
            np.testing.assert_allclose(group[split][m], solo[split][m], rtol=1e-5, err_msg=m)
    for m in solo["diagnostics"]:
        np.testing.assert_allclose(group["diagnostics"][m], solo["diagnostics"][m], rtol=1e-5)
    assert group.keys() - solo.keys() == {"group"}
    assert group["best_epoch"] == solo["best_epoch"] and group["steps"] == solo["steps"]
    assert group["kd"] == solo["kd"] and group["teacher_checkpoint"] == solo["teacher_checkpoint"]
    assert (group_dir / "result.json").is_file()
    # Per-example test outcomes: the same predictions, kept in the result and beside it.
    assert group["test_outcomes"] == solo["test_outcomes"]
    on_disk = json.loads((group_dir / "test_outcomes.json").read_text())
    assert on_disk == group["test_outcomes"] and len(on_disk["ids"]) == len(on_disk["values"])


def _trained(root: Path, task: str, data: dict, labels: list[str], extra=(), **train_cfg):
    """The members' solo runs and one group of them (plus `extra` members)."""
    teacher = _teacher_run(root, task, labels)
    cfg = lambda name, kd, lr, ckpt, **t: _cfg(root, task, data, teacher, name, kd, lr, ckpt, **t)
    solo = [train(cfg(f"solo{k}", *m, **train_cfg), progress=False) for k, m in enumerate(MEMBERS)]
    members = [cfg(f"group{k}", *m, **train_cfg) for k, m in enumerate([*MEMBERS, *extra])]
    group = train_group(members, progress=False)
    return cfg, solo, group


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("sentiment")
    return (root, *_trained(root, "classification", SENTIMENT, ["neg", "pos"], [BLOWUP]))


def test_grouped_classification_equals_solo_runs(sentiment):
    root, _, solo, group = sentiment
    for k, r in enumerate(group[: len(MEMBERS)]):
        assert r["group"]["size"] == len(MEMBERS) + 1 and r["group"]["index"] == k
        _same_run(r, solo[k], root / f"group{k}", root / f"solo{k}")


def test_a_diverging_member_fails_alone(sentiment):
    root, cfg, _, group = sentiment
    k = len(MEMBERS)  # BLOWUP; the others equal their solo runs (test above)
    assert group[k]["failed"] and "loss became nan at step" in group[k]["error"]
    assert group[k]["group"]["index"] == k
    assert not (root / f"group{k}" / "result.json").exists()
    with pytest.raises(ValueError, match=r"differs from .* in \['train'\]"):
        train_group([cfg("x0", *MEMBERS[0]), cfg("x1", *BLOWUP, max_grad_norm=None)])


def test_group_killed_between_members_saves_resumes_to_the_uninterrupted_result(
    sentiment, monkeypatch
):
    """Killed after the first member saved its epoch and before the second did, the group
    started again ends where the uninterrupted group (the fixture's) ended, member by member."""
    from kdjax.training import run_dir

    root, cfg, _, group = sentiment
    members = [cfg(f"killed{k}", *m) for k, m in enumerate([*MEMBERS, BLOWUP])]
    real, saved = run_dir.RunDir.save_last, []

    def save_then_die(self, epoch, state, host):
        if saved:
            raise KeyboardInterrupt("killed between two members' saves")
        real(self, epoch, state, host)
        saved.append(self.dir.name)

    monkeypatch.setattr(run_dir.RunDir, "save_last", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_group(members, progress=False)
    last = root / "killed1" / "checkpoints" / "last"
    assert saved == ["killed0"] and not any(p.name.isdigit() for p in last.glob("*"))
    monkeypatch.setattr(run_dir.RunDir, "save_last", real)
    again = train_group(members, progress=False)
    for k in range(len(MEMBERS)):
        reference = {key: v for key, v in group[k].items() if key != "group"}
        _same_run(again[k], reference, root / f"killed{k}", root / f"group{k}")
    assert again[len(MEMBERS)]["failed"]


def test_grouped_ner_equals_solo_runs(tmp_path):
    # Two epochs (each member picks its own hs/ll epoch) and a warmup of 3 of the 6 steps.
    _, solo, group = _trained(
        tmp_path, "token_classification", NER, CONLL, epochs=2, warmup_ratio=0.5
    )
    for k, r in enumerate(group):
        _same_run(r, solo[k], tmp_path / f"group{k}", tmp_path / f"solo{k}")


def test_group_key_and_size(tmp_path):
    teacher = str(tmp_path / "t")
    cfg = lambda name, kd, lr, ckpt, **t: _cfg(
        tmp_path, "classification", SENTIMENT, teacher, name, kd, lr, ckpt, **t
    )
    a, b = cfg("a", *MEMBERS[0]), cfg("b", *MEMBERS[1])
    assert group_key(a) == group_key(b)
    assert group_key(cfg("c", *MEMBERS[0], seed=1)) != group_key(a)  # seeds form other groups
    assert group_key(cfg("d", *MEMBERS[0], batch_size=4)) != group_key(a)
    online = parse_config({**a.model_dump(mode="json"), "teacher_mode": "online"})
    assert group_key(online) == ("solo", online.output_dir)
    assert max_group_size(a, 1 << 62, cap=12) == 12 and max_group_size(a, 1) == 1
    # 1 layer, H32, vocabulary 30522: ~1M params, about 20 MB per member with activations.
    assert 4 <= max_group_size(a, 100 << 20, cap=64) <= 6
