"""The trainer end to end on fixture data with tiny models: finetune a teacher, distil a student."""

import json

import jax
import numpy as np
import pytest
import yaml
from fixtures import SENTIMENT, tiny_model
from flax import nnx

from kdjax.cli import main
from kdjax.config import parse_config
from kdjax.training import TrainingDiverged, train
from kdjax.training.teacher import params_sha256

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


# Validation (accuracy, loss) planted per epoch: hs (highest accuracy) is epoch 1, ll (lowest
# loss) epoch 2, and the last epoch is neither.
PLANTED = {1: (0.75, 0.60), 2: (0.50, 0.40), 3: (0.625, 0.70)}


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A 3-epoch teacher whose validation scores are planted (`PLANTED`); also returns each
    epoch's params, copied as the epoch ended."""
    from kdjax.training import run_dir

    out, params = tmp_path_factory.mktemp("teacher"), {}
    real = run_dir.RunDir.end_epoch

    def planted(self, epoch, val, metric, state, host):
        params[epoch] = jax.tree.map(lambda x: np.array(jax.device_get(x)), state.params)
        val = {**val, "accuracy": PLANTED[epoch][0], "loss": PLANTED[epoch][1]}
        return real(self, epoch, val, metric, state, host)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_dir.RunDir, "end_epoch", planted)
        cfg = _cfg(out)
        cfg["train"]["epochs"] = 3
        result = train(parse_config(cfg), progress=False)
    return out, result, params


def _model_params(model_dir):
    from kdjax.models import from_pretrained

    return nnx.split(from_pretrained(model_dir, "classification", labels=["neg", "pos"]))


def test_finetune_writes_its_outputs(teacher_run):
    """Outputs and the checkpoints kept: hs is the epoch with the highest validation score
    and ll the one with the lowest validation loss (planted: epochs 1 and 2 of 3), they hold
    those epochs' params, and model/ is the hs params."""
    out, result, params = teacher_run
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["hidden"] == 32 and saved["output_dir"] == str(out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["event"] == "eval"] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in rows)
    on_disk = json.loads((out / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    for split in ("validation", "test"):
        assert 0.0 <= result[split]["accuracy"] <= 1.0 and result[split]["loss"] > 0
    assert result["steps"] == 12  # ceil(48 / 12) * 3
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
    for which in ("hs", "ll", "last"):
        assert any(p.name.isdigit() for p in (out / "checkpoints" / which).iterdir())
    ckpt = result["checkpoints"]
    assert result["best_epoch"] == ckpt["hs"]["epoch"] == 1 and ckpt["ll"]["epoch"] == 2
    assert [h["accuracy"] for h in result["history"]] == [a for a, _ in PLANTED.values()]
    assert result["validation"] == result["history"][0]  # the hs epoch's
    # Each checkpoint holds its epoch's params, by content; model/ holds hs.
    sha = {e: params_sha256(p) for e, p in params.items()}
    assert len(set(sha.values())) == 3
    for which, epoch in (("hs", 1), ("ll", 2)):
        digest = (out / "checkpoints" / f"{which}.sha256").read_text().strip()
        assert digest == ckpt[which]["params_sha256"] == sha[epoch]
    assert params_sha256(_model_params(out / "model")[1]) == sha[1]


def test_distill_from_each_teacher_checkpoint_uses_its_logits(teacher_run, tmp_path):
    """Distillations from hs and from ll build two logit entries, each equal to the predictions
    of that checkpoint's epoch params (planted: epochs 1 and 2)."""
    from transformers import AutoTokenizer

    from kdjax.data import build_dataset
    from kdjax.data.sources import minilm_dir

    teacher_out, _, params = teacher_run
    kd = {"distance": "kl", "alpha": 0.5, "tau_t": 2.0, "tau_s": 1.0}
    for ckpt in ("hs", "ll"):
        cfg = _cfg(tmp_path / ckpt, teacher=str(teacher_out), teacher_checkpoint=ckpt, kd=kd,
                   train={"epochs": 1, "batch_size": 16, "learning_rate": 1e-3})  # fmt: skip
        result = train(parse_config(cfg), progress=False)
        assert result["kind"] == "distill" and result["kd"]["distance"] == "kl"
        assert 0.0 <= result["test"]["agreement"] <= 1.0
        assert result["teacher"] == str(teacher_out) and result["teacher_checkpoint"] == ckpt
        assert result["teacher_mode"] == "cached"
    ds = build_dataset(parse_config(cfg).data, AutoTokenizer.from_pretrained(minilm_dir()))
    graphdef = _model_params(teacher_out / "model")[0]
    entries = {
        json.loads(m.read_text())["inputs"]["teacher_sha256"]: m.parent
        for m in (teacher_out / "logit_cache").glob("*/manifest.json")
    }
    assert len(entries) == 2
    for epoch in (1, 2):
        entry = entries[params_sha256(params[epoch])]
        model = nnx.merge(graphdef, params[epoch])
        for split, enc in ds.splits.items():
            a = enc.arrays
            want = model(a["input_ids"], a["attention_mask"], a["token_type_ids"])
            got = np.load(entry / f"{split}.npy")
            np.testing.assert_allclose(got, np.asarray(want), atol=2e-5, rtol=1e-4)


def test_teacher_with_other_labels_fails_before_training(teacher_run, tmp_path):
    teacher_out = teacher_run[0]
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


def test_rerun_with_another_config_into_the_same_output_dir_starts_fresh(tmp_path):
    """A finished run, then a run with another config (learning rate) into the same
    output_dir: it neither resumes from nor mixes in the old run's state or metrics log; it
    equals the same config run in an empty directory."""
    from safetensors.numpy import load_file

    train_cfg = lambda lr, epochs: {"epochs": epochs, "batch_size": 12, "learning_rate": lr,
                                    "log_every": 2}  # fmt: skip
    # One epoch each: a wrongly resumed second run would find the first one finished.
    train(parse_config(_cfg(tmp_path / "a", train=train_cfg(1e-3, 1))), progress=False)
    again = train(parse_config(_cfg(tmp_path / "a", train=train_cfg(3e-3, 1))), progress=False)
    fresh = train(parse_config(_cfg(tmp_path / "b", train=train_cfg(3e-3, 1))), progress=False)
    assert again["resumed_after_epoch"] is None and again["history"] == fresh["history"]
    log = lambda d: [json.loads(x)["event"] for x in (d / "metrics.jsonl").read_text().split("\n")
                     if x]  # fmt: skip
    assert log(tmp_path / "a") == log(tmp_path / "b")
    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6, rtol=0, err_msg=k)
