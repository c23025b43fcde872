"""The trainer end to end on fixture data with tiny models: finetune a teacher, distil a student."""

import json

import numpy as np
import pytest
import yaml
from fixtures import SENTIMENT, tiny_model

from kdjax.cli import main
from kdjax.config import parse_config
from kdjax.training import TrainingDiverged, train

TINY = tiny_model(layers=2, heads=4)


def _cfg(out, **over):
    d = {
        "task": "classification",
        "data": {**SENTIMENT, "max_length": 32},
        "model": TINY,
        "train": {
            "epochs": 2,
            "batch_size": 12,
            "eval_batch_size": 16,
            "learning_rate": 1e-3,
            "log_every": 2,
        },
        "output_dir": str(out),
    }
    d.update(over)
    return d


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    result = train(parse_config(_cfg(out)), progress=False)
    return out, result


def test_finetune_writes_its_outputs(teacher_run):
    out, result = teacher_run
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["hidden"] == 32 and saved["output_dir"] == str(out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["event"] == "eval"] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in rows)
    on_disk = json.loads((out / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    for split in ("validation", "test"):
        assert 0.0 <= result[split]["accuracy"] <= 1.0 and result[split]["loss"] > 0
    assert result["best_epoch"] in (1, 2) and result["steps"] == 8  # ceil(48 / 12) * 2
    assert result["versions"]["jax"] and result["wall_time_s"] > 0
    # One 0/1 outcome per test example (their mean is the accuracy), also in a small file.
    outcomes = result["test_outcomes"]
    assert outcomes["ids"] == list(range(result["data"]["examples"]["test"]))
    assert set(outcomes["values"]) <= {0, 1}
    assert np.mean(outcomes["values"]) == pytest.approx(result["test"]["accuracy"])
    assert json.loads((out / "test_outcomes.json").read_text()) == outcomes
    assert "outcomes" not in result["test"]
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "model" / "tokenizer.json").is_file() or (out / "model" / "vocab.txt").is_file()
    # hs = highest validation accuracy (ties: lower loss), ll = lowest validation loss.
    hist = result["history"]
    ll = min(hist, key=lambda h: h["loss"])["epoch"]
    hs = max(hist, key=lambda h: (h["accuracy"], -h["loss"]))["epoch"]
    assert result["checkpoints"]["ll"]["epoch"] == ll and result["checkpoints"]["hs"]["epoch"] == hs
    for which in ("hs", "ll", "last"):
        assert any(p.name.isdigit() for p in (out / "checkpoints" / which).iterdir())
    for which in ("hs", "ll"):  # students find their cached logits by these hashes
        digest = (out / "checkpoints" / f"{which}.sha256").read_text().strip()
        assert digest == result["checkpoints"][which]["params_sha256"] and len(digest) == 64
    # The best epoch was restored from its checkpoint: its validation metrics match the history.
    best = result["history"][result["best_epoch"] - 1]
    assert result["validation"]["accuracy"] == best["accuracy"]
    np.testing.assert_allclose(result["validation"]["loss"], best["loss"], rtol=1e-6)


def test_distill_from_the_finetuned_teacher(teacher_run, tmp_path):
    teacher_out, teacher_result = teacher_run
    kd = {"distance": "kl", "alpha": 0.5, "tau_t": 2.0, "tau_s": 1.0}
    cfg = _cfg(
        tmp_path / "student",
        teacher=str(teacher_out),
        kd=kd,
        train={"epochs": 1, "batch_size": 16, "learning_rate": 1e-3},
    )
    result = train(parse_config(cfg), progress=False)
    assert result["kind"] == "distill" and result["kd"]["distance"] == "kl"
    assert 0.0 <= result["test"]["agreement"] <= 1.0
    assert result["teacher"] == str(teacher_out) and result["teacher_checkpoint"] == "hs"
    assert result["teacher_mode"] == "cached"
    assert any((teacher_out / "logit_cache").glob("*/manifest.json"))


def test_teacher_with_other_labels_fails_before_training(teacher_run, tmp_path):
    teacher_out, _ = teacher_run
    cfg = _cfg(tmp_path / "s", teacher=str(teacher_out), kd={"alpha": 0.5})
    cfg["data"]["labels"] = ["pos", "neg"]
    with pytest.raises(ValueError, match=r"teacher: .* was trained with labels \['neg', 'pos'\]"):
        train(parse_config(cfg), progress=False)
    assert not (tmp_path / "s").exists()  # nothing was started


def test_divergence_stops_with_a_clear_error(tmp_path):
    cfg = _cfg(
        tmp_path / "d",
        train={
            "epochs": 1,
            "batch_size": 12,
            "learning_rate": 1e30,
            "log_every": 1,
            "max_grad_norm": None,
            "warmup_ratio": 0,
        },
    )
    with pytest.raises(TrainingDiverged, match=r"loss became nan at step \d+"):
        train(parse_config(cfg), progress=False)


def test_cli_reports_bad_config(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    bad = _cfg(tmp_path / "o", teacher="somewhere", kd={"distance": "hamming"})
    f.write_text(yaml.safe_dump(bad))
    assert main(["distill", str(f)]) == 2
    err = capsys.readouterr().err
    assert "kd.distance: unknown distance 'hamming'; allowed: ce, cosine, js, kl" in err
    missing = _cfg(tmp_path / "o", teacher=str(tmp_path / "no-teacher"), kd={"alpha": 0.5})
    f.write_text(yaml.safe_dump(missing))
    assert main(["distill", str(f)]) == 2
    assert "does not exist; fine-tune the teacher first" in capsys.readouterr().err


def test_killed_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    """A run interrupted after epoch 1 resumes at epoch 2 and ends exactly where an
    uninterrupted run ends."""
    from safetensors.numpy import load_file

    from kdjax.training import run_dir

    cfg = parse_config(
        _cfg(
            tmp_path / "a",
            train={"epochs": 2, "batch_size": 12, "learning_rate": 1e-3, "log_every": 2},
        )
    )
    whole = train(cfg, progress=False)

    cfg = parse_config(
        _cfg(
            tmp_path / "b",
            train={"epochs": 2, "batch_size": 12, "learning_rate": 1e-3, "log_every": 2},
        )
    )
    real_save = run_dir.RunDir.save_last

    def save_then_die(self, epoch, state, host):
        real_save(self, epoch, state, host)
        raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(run_dir.RunDir, "save_last", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False)
    assert not (tmp_path / "b" / "result.json").exists()
    monkeypatch.setattr(run_dir.RunDir, "save_last", real_save)
    resumed = train(cfg, progress=False)
    assert resumed["resumed_after_epoch"] == 1 and whole["resumed_after_epoch"] is None
    assert resumed["history"] == whole["history"]
    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-6, rtol=0)
