"""Planted-answer studies through the real sweep engine (planner, driver, ledger) with a plug-in
trainer that trains nothing, analysed by the report's statistics; and `kdjax simulate`."""

import copy
import json
import textwrap

import pytest
import yaml
from sweep_helpers import BASE

from kdjax.analysis import effects_frame, recommendation
from kdjax.sweep import Ledger, Planner, load_manifest, run_study
from kdjax.sweep.cli import main as sweep_main
from kdjax.sweep.simulate import (
    Noise,
    noise_from_ledger,
    option_key,
    parse_effects,
    plant,
    summarize,
    truths,
)

# The review's case: hs and ll the same runs, ce and kl the same runs, mse -0.5 points,
# alpha 1 -1 point, tau_t 4 +2 points and searched last; tau_s has no effect.
REVIEW = {
    "effects": {"distance": {"mse": -0.5}, "alpha": {1.0: -1.0}, "tau_t": {4.0: 2.0}},
    "identical": {"teacher": ["hs", "ll"], "distance": ["ce", "kl"]},
    "base": 0.8,
    "baseline": -1.0,
}
AXES = {"teacher": ["hs", "ll"], "distance": ["ce", "kl", "mse"], "tau_s": ["same", 1.0],
        "alpha": [0.5, 1.0], "tau_t": [2.0, 1.0, 4.0]}  # fmt: skip
# Little noise (runs disagree on about 0.4% of the examples), so that an estimate over 5 units
# has a standard error under 0.1 point and must land within 0.3 points of the truth.
QUIET = Noise(seed_sd=0.05, test_n=2000, val_n=1000, rho=0.9999)


def study(tmp_path, n_pairs=5, trainer="kdjax.sweep.simulate:planted", **over):
    """A manifest with `n_pairs` datasets (the fixture data, told apart by max_length) and
    one student, trained by `trainer`."""
    d = copy.deepcopy(BASE)
    ds = d["datasets"][0]
    d["datasets"] = [
        {**ds, "name": f"d{i}", "data": {**ds["data"], "max_length": 32 + i}}
        for i in range(n_pairs)
    ]
    d.update(students=d["students"][:1], trainer=trainer, **over)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def run_planted(path, workdir, spec, noise=QUIET):
    m = load_manifest(path)
    plant(Planner(m, workdir), parse_effects(spec), noise)
    run_study(path, workdir, progress=False, report=False)
    return m, effects_frame(workdir, n_boot=400), recommendation(workdir, n_boot=400)


def check_effects(frame, truth, tol=0.3):
    for (axis, option), t in truth.items():
        row = frame[(frame["axis"] == axis) & (frame["option"].map(option_key) == option)]
        assert len(row) == 1, (axis, option)
        row = row.iloc[0]
        assert row["effect"] == pytest.approx(t, abs=tol), (axis, option, row.to_dict())
        if t == 0:  # no cost: an interval holding 0, nothing significant
            assert row["ci_low"] <= 0 <= row["ci_high"], row.to_dict()
            assert not row["p_value"] < 0.05, row.to_dict()


def test_greedy_review_case_recovers_every_planted_effect(tmp_path):
    search = {"strategy": "greedy", "order": ["teacher", "distance", "tau_s", "alpha", "tau_t"]}
    path = study(tmp_path, axes=AXES, search=search, seeds=[0, 1])
    m, frame, rec = run_planted(path, tmp_path / "w", REVIEW)
    check_effects(frame, truths(m, parse_effects(REVIEW)["effects"]))
    identical = frame[frame["option"].isin(["ll", "kl"])]
    assert (identical["effect"] == 0).all() and (identical["ci_low"] <= 0).all()
    config = rec["config"]
    assert config["alpha"] == 0.5 and config["tau_t"] == 4.0 and config["distance"] in ("ce", "kl")
    with Ledger(tmp_path / "w" / "ledger.sqlite") as ledger:
        stages = {r["stage"] for r in ledger.rows(kind="distill")}
    assert {"sensitivity", "transfer"} <= stages


def test_grid_recovers_every_planted_effect(tmp_path):
    axes = {"distance": ["ce", "mse"], "alpha": [0.5, 1.0], "tau_t": [1.0, 4.0]}
    path = study(tmp_path, axes=axes, seeds=[0])
    spec = {k: v for k, v in REVIEW.items() if k != "identical"}
    m, frame, rec = run_planted(path, tmp_path / "w", spec)
    check_effects(frame, truths(m, parse_effects(spec)["effects"]))
    assert (rec["config"]["distance"], rec["config"]["alpha"], rec["config"]["tau_t"]) == (
        "ce", 0.5, 4.0,
    )  # fmt: skip


# Validation prefers what test punishes: the larger alpha and tau_t score higher on validation
# and lower on test. Every choice must follow validation.
ANTI = textwrap.dedent(
    """
    def train(cfg):
        kd = cfg["kd"]
        if cfg["teacher"] is None or not kd or kd["alpha"] == 0:
            return {"val_metric": 0.7, "test_metric": 0.7}
        gain = 0.02 * (kd["alpha"] == 1.0) + 0.01 * (kd["tau_t"] == 4.0)
        return {"val_metric": 0.7 + gain, "test_metric": 0.7 - gain}
    """
)


def test_every_choice_follows_validation_when_test_disagrees(tmp_path):
    (tmp_path / "anti.py").write_text(ANTI)
    axes = {"alpha": [0.5, 1.0], "tau_t": [1.0, 4.0]}
    search = {"strategy": "greedy", "order": ["alpha", "tau_t"]}
    path = study(tmp_path, trainer="anti:train", axes=axes, search=search)
    run_study(path, tmp_path / "w", progress=False, report=False)
    history = json.loads((tmp_path / "w" / "search.json").read_text())
    stages = {e["stage"]: e for e in history}
    assert set(map(tuple, stages["2:tau_t"]["best"].values())) == {("hs", "ce", 1.0, 4.0, "same")}
    frame = effects_frame(tmp_path / "w", n_boot=200)
    # (The transfer stage's reference configuration, tau_s 1, adds a tau_s contrast.)
    frame = frame[frame["axis"].isin(axes)]
    best = frame[frame["verdict"].str.startswith("best option")]
    assert set(zip(best["axis"], best["option"], strict=True)) == {("alpha", "1"), ("tau_t", "4")}
    worse_on_val = frame[~frame["verdict"].str.startswith("best option")]
    assert (worse_on_val["effect"] > 0).all()  # better on test, though not chosen
    config = recommendation(tmp_path / "w", n_boot=200)["config"]
    assert (config["alpha"], config["tau_t"]) == (1.0, 4.0)


def test_simulate_command_prints_power_bias_and_coverage(tmp_path, capsys):
    axes = {"distance": ["ce", "mse"], "alpha": [0.5, 1.0]}
    path = study(tmp_path, n_pairs=3, trainer=None, axes=axes, seeds=[0])
    (tmp_path / "effects.yaml").write_text(
        yaml.safe_dump({"effects": {"alpha": {1.0: -5.0}}, "base": 0.8})
    )
    args = ["simulate", str(path), "--effects", str(tmp_path / "effects.yaml"), "--repeats", "2",
            "--noise", "seed_sd=0.2,test_n=2000", "--n-boot", "200"]  # fmt: skip
    assert sweep_main(args) == 0
    out = capsys.readouterr().out
    assert "noise (stated, --noise overrides): Noise(seed_sd=0.2, test_n=2000, val_n=1000" in out
    lines = {tuple(ln.split()[:2]): ln.split() for ln in out.splitlines() if ln.strip()}
    alpha1 = lines[("alpha", "1")]  # axis option truth estimate bias detected coverage ...
    assert float(alpha1[2]) == -5.0 and abs(float(alpha1[4])) < 0.5
    assert float(alpha1[5]) == 1.0  # a 5-point effect on 3 x 2000 examples: found every time
    assert lines[("distance", "mse")][2] == "0.00"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"effects": {"beta": {1: 1}}}))
    assert sweep_main(["simulate", str(path), "--effects", str(bad)]) == 2
    assert "effects.beta: unknown axis" in capsys.readouterr().err


def test_noise_read_back_from_a_finished_ledger(tmp_path):
    axes = {"distance": ["ce", "mse"], "alpha": [0.5, 1.0]}
    path = study(tmp_path, n_pairs=3, axes=axes, seeds=[0, 1, 2])
    noise = Noise(seed_sd=1.0, test_n=1500, val_n=500, rho=0.6)
    m = load_manifest(path)
    plant(Planner(m, tmp_path / "w"), parse_effects({"base": 0.75}), noise)
    run_study(path, tmp_path / "w", progress=False, report=False)
    got = noise_from_ledger(tmp_path / "w")
    assert got.test_n == 1500 and got.rho == pytest.approx(0.6, abs=0.1)
    assert 0.5 < got.seed_sd < 1.6  # 30 degrees of freedom: about ±15%, less the binomial part


def test_summary_scores_each_study_against_the_best_it_chose():
    import pandas as pd

    truth = {("alpha", 0.5): 0.0, ("alpha", 1.0): -2.0}
    best = "best option (chosen on validation)"
    rows = [  # study 0 chose right; study 1 chose alpha 1, so alpha 0.5 shows +2
        ("alpha", "0.5", 0.0, 0.0, 0.0, None, best, 0),
        ("alpha", "1", -1.8, -2.5, -1.1, 0.01, "worse by 1.8 pt", 0),
        ("alpha", "0.5", 2.4, 1.0, 2.6, 0.2, "no detectable difference", 1),
        ("alpha", "1", 0.0, 0.0, 0.0, None, best, 1),
    ]
    cols = ["axis", "option", "effect", "ci_low", "ci_high", "p_value", "verdict", "repeat"]
    out = summarize(pd.DataFrame(rows, columns=cols), truth).set_index("option")
    assert out.loc["1", "detected"] == 0.5 and out.loc["1", "chosen_best"] == 0.5
    assert out.loc["1", "bias"] == pytest.approx((0.2 + 0.0) / 2)  # -1.8 vs -2; 0 vs 0
    assert out.loc["0.5", "bias"] == pytest.approx((0.0 + 0.4) / 2)  # 0 vs 0; 2.4 vs 2
    assert out.loc["0.5", "coverage"] == 1.0 and out.loc["1", "coverage"] == 1.0


def test_the_shipped_demo_design_runs_planted(tmp_path):
    # The demo's whole design (pair, seeds, KD run + no-KD baseline per seed) through the
    # engine in seconds, and the report's KD gain on it: a planted 3-point gain is detected.
    from pathlib import Path

    from kdjax.analysis.load import load_study
    from kdjax.analysis.recommend import kd_gain
    from kdjax.sweep.simulate import simulate

    demo = Path(__file__).resolve().parent.parent / "experiments" / "demo.yaml"
    spec = parse_effects({"base": 0.72, "baseline": -3.0})
    simulate(demo, spec, Noise(seed_sd=1.0, test_n=1500, rho=0.85), 1, n_boot=200,
             keep=tmp_path)  # fmt: skip
    with Ledger(tmp_path / "study000" / "ledger.sqlite") as ledger:
        assert len(ledger.rows(status="done")) == 1 + 36  # the teacher, 18 KD runs, 18 no-KD
    study = load_study(tmp_path / "study000")
    (gain,) = kd_gain(study, study.pairs, n_boot=200)
    t = gain.default_test
    assert t.level == "seeds" and t.lo > 0 and t.p < 0.05
    assert abs(t.estimate * 100 - 3.0) < 1.0 and t.hi - t.lo < 2.0  # +-0.7-ish with 18 seeds
