"""Plug-in trainers (`trainer: module:function`), tuned baselines, the sensitivity and transfer
stages' plans, and ce/kl equivalence in manifests."""

import json
import logging
import textwrap

import pytest
import yaml
from sweep_helpers import BASE, manifest

from kdjax.config import ConfigError
from kdjax.sweep import Ledger, Planner, load_manifest, run_study
from kdjax.sweep.cli import main as sweep_main

TRAINER = textwrap.dedent(
    """
    import json
    from pathlib import Path

    def train(cfg):
        # Every call leaves its config beside the manifest, for the test to read.
        with open(Path(__file__).parent / "calls.jsonl", "a") as f:
            f.write(json.dumps(cfg) + "\\n")
        kd = cfg["kd"] or {}
        if cfg["teacher"] is None:
            return {"val_metric": 0.9, "test_metric": 0.88}
        acc = 0.6 + 0.1 * (kd.get("alpha") == 1.0) + 0.01 * cfg["train"]["seed"]
        correct = [1] * int(acc * 50) + [0] * (50 - int(acc * 50))
        return {"val_metric": acc, "test_metric": sum(correct) / 50,
                "test_correct": correct, "val_loss": 1 - acc}

    def broken(cfg):
        if cfg["teacher"] is None:
            return {"val_metric": 0.9, "test_metric": 0.9}
        kd = cfg["kd"] or {"alpha": 0}
        if kd["alpha"] == 0:
            return [0.5]
        if kd.get("distance") == "kl":
            return {"val_metric": 0.5}
        return {"val_metric": float("nan"), "test_metric": 0.5}
    """
)


def plugin_study(tmp_path, trainer="mytrainer:train", **over):
    (tmp_path / "mytrainer.py").write_text(TRAINER)
    return manifest(tmp_path, trainer=trainer, **over)


def test_plugin_trainer_is_called_for_every_run_and_recorded(tmp_path):
    path = plugin_study(tmp_path, students=BASE["students"][:1], seeds=[0, 1])
    out = run_study(path, tmp_path / "w", progress=False)
    calls = [json.loads(x) for x in (tmp_path / "calls.jsonl").read_text().splitlines()]
    # teacher + per seed: baseline + 2 distances x 2 alphas.
    assert out["done"] == len(calls) == 1 + 2 * 5 and out["failed"] == 0
    teacher = [c for c in calls if c["teacher"] is None]
    assert len(teacher) == 1 and teacher[0]["kd"] is None
    student = next(c for c in calls if c["teacher"] and c["kd"]["alpha"] == 1.0)
    assert set(student) >= {"task", "data", "model", "teacher", "teacher_checkpoint", "kd",
                            "train", "output_dir"}  # fmt: skip
    assert set(student["kd"]) == {"distance", "alpha", "tau_t", "tau_s", "tau_squared"}
    assert student["train"]["seed"] in (0, 1) and student["task"] == "classification"
    with Ledger(tmp_path / "w" / "ledger.sqlite") as ledger:
        rows = {r["run_id"]: r for r in ledger.rows(kind="distill")}
        row = next(r for r in rows.values() if r["alpha"] == 1.0 and r["seed"] == 1)
        assert row["val_metric"] == pytest.approx(0.71) and row["metric_name"] == "accuracy"
        assert row["test_metric"] == pytest.approx(35 / 50)
        result = json.loads(row["result_json"])
        assert result["trainer"] == "mytrainer:train" and result["validation"]["loss"] > 0
        assert result["test_outcomes"]["ids"] == list(range(50))
        assert sum(result["test_outcomes"]["values"]) == 35
    run_dir = tmp_path / "w" / "runs" / row["run_id"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["kd"]["alpha"] == 1.0
    assert json.loads((run_dir / "test_outcomes.json").read_text()) == result["test_outcomes"]
    assert json.loads((run_dir / "result.json").read_text())["test"]["accuracy"] == 0.7


def test_plugin_bad_returns_fail_their_runs_with_clear_errors(tmp_path):
    path = plugin_study(tmp_path, trainer="mytrainer:broken", students=BASE["students"][:1])
    out = run_study(path, tmp_path / "w", progress=False)
    assert out["done"] == 1 and out["failed"] == 5
    with Ledger(tmp_path / "w" / "ledger.sqlite") as ledger:
        errors = {(r["distance"], r["kind"]): r["error"].splitlines()[0]
                  for r in ledger.rows(status="failed")}  # fmt: skip
    assert errors[(None, "baseline")].startswith("TrainerResultError: trainer mytrainer:broken")
    assert (
        "returned list; expected a dict with val_metric and test_metric"
        in (errors[(None, "baseline")])
    )
    assert errors[("kl", "distill")].endswith("the returned dict lacks ['test_metric']")
    assert errors[("ce", "distill")].endswith("val_metric must be a finite number, got nan")


@pytest.mark.parametrize(
    "trainer, expected",
    [
        ("nowhere:train", "trainer: module 'nowhere' not found next to the manifest"),
        ("mytrainer:missing", "trainer: module 'mytrainer' ("),
        ("mytrainer", "trainer: String should match pattern"),
    ],
)
def test_plugin_trainer_errors_name_the_field(tmp_path, trainer, expected):
    with pytest.raises(ConfigError) as e:
        load_manifest(plugin_study(tmp_path, trainer=trainer))
    assert expected in str(e.value)


def test_plugin_plan_needs_no_data(tmp_path, capsys):
    missing = {"source": "files", "files": {"train": "nope.csv", "validation": "nope.csv",
               "test": "nope.csv"}}  # fmt: skip
    datasets = [{"name": "x", "task": "classification", "data": missing}]
    path = plugin_study(tmp_path, datasets=datasets)
    assert sweep_main(["plan", str(path), "--workdir", str(tmp_path / "w")]) == 0
    assert "student runs" in capsys.readouterr().out
    assert run_study(path, tmp_path / "w", progress=False)["failed"] == 0


def test_tuned_baselines_carry_their_learning_rate(tmp_path):
    path = manifest(tmp_path, baseline={"learning_rate": [1e-4, 5e-5, 3e-4]}, seeds=[0, 1])
    m = load_manifest(path)
    planner = Planner(m, tmp_path / "w")
    base = [r for r in planner.grid() if r.kind == "baseline"]
    # 5e-5 is the training settings' own rate: the untuned baseline, one run.
    lrs = sorted({r.config.train.learning_rate for r in base})
    assert lrs == [5e-5, 1e-4, 3e-4] and len(base) == 2 * 2 * 3
    stage = planner.greedy_stage(0, {p: planner.default_point() for p in planner.pairs()})
    assert sum(r.kind == "baseline" for r in stage.runs) == 2 * 2 * 3
    assert load_manifest(manifest(tmp_path, baseline=False)).baseline_lrs() == []
    with pytest.raises(ConfigError, match="baseline.bool"):
        load_manifest(manifest(tmp_path, baseline={"learning_rate": []}))


def test_ce_and_kl_warn_and_can_share_one_run(tmp_path, caplog, capsys):
    with caplog.at_level(logging.WARNING):
        load_manifest(manifest(tmp_path))
    assert "ce and kl train identically (equal gradients" in caplog.text
    assert sweep_main(["plan", str(manifest(tmp_path))]) == 0
    assert "warning: axes.distance: ce and kl train identically" in capsys.readouterr().out
    caplog.clear()
    search = {"strategy": "greedy", "equivalent_distances": "share"}
    with caplog.at_level(logging.WARNING):
        m = load_manifest(manifest(tmp_path, search=search))
    assert caplog.text == ""
    planner = Planner(m, tmp_path / "w")
    pair = planner.pairs()[0]
    ce, kl = (planner.distill(*pair, ("hs", d, 0.5, 1.0, "same"), 0) for d in ("ce", "kl"))
    assert ce.run_id == kl.run_id and kl.config.kd.distance == "ce"
    stage = planner.greedy_stage(1, {p: planner.default_point() for p in planner.pairs()})
    assert len({r.run_id for r in stage.runs}) == 2  # one run per student for both names


def test_sensitivity_changes_one_knob_at_a_time(tmp_path):
    axes = {"teacher": ["hs", "ll"], "distance": ["ce", "mse"], "alpha": [0.5, 1.0],
            "tau_t": [1, 2, 4], "tau_s": ["same", 1]}  # fmt: skip
    m = load_manifest(manifest(tmp_path, axes=axes, search={"strategy": "greedy"}))
    planner = Planner(m, tmp_path / "w")
    best = {p: ("ll", "mse", 1.0, 2.0, "same") for p in planner.pairs()}
    stage = planner.sensitivity_stage(best)
    assert stage.label == "sensitivity"
    for options in stage.options.values():
        assert len(options) == 1 + (1 + 1 + 1 + 2 + 1)
        for point in options:
            assert sum(a != b for a, b in zip(point, best[planner.pairs()[0]], strict=True)) <= 1
    with pytest.raises(ConfigError, match="search.sensitivity: only used with strategy 'greedy'"):
        load_manifest(manifest(tmp_path, search={"sensitivity": True}))
