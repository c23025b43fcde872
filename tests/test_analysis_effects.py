"""Fair effects and the recommendation on planted studies (pure numpy, no training)."""

import json

import numpy as np
import pytest
from analysis_helpers import Simulator, additive

from kdjax.analysis import effects_frame, recommendation
from kdjax.analysis.effects import COLUMNS, axis_effect
from kdjax.analysis.load import study_from_rows
from kdjax.analysis.results import analyse
from kdjax.sweep.ledger import NAMES, Ledger

AXES = {
    "teacher": ["hs", "ll"],
    "distance": ["ce", "kl", "mse"],
    "alpha": [0.5, 1.0],
    "tau_t": [1.0, 2.0, 4.0],
    "tau_s": ["same", 1.0],
}
ORDER = ["teacher", "distance", "alpha", "tau_t", "tau_s"]
PAIRS = [(f"d{i}", s) for i in range(4) for s in ("small", "big")]
BASE = {p: 0.55 + 0.01 * k for k, p in enumerate(PAIRS)}
# Planted (fractions): hs = ll, ce = kl, mse -0.5 pt, alpha 0.5 -1 pt, tau_t 4 +2 pt (searched
# late: under the old analysis every early loser was charged with it).
PLANTED = {"distance": {"mse": -0.005}, "alpha": {0.5: -0.01}, "tau_t": {4.0: 0.02}}
EXPECTED = {
    ("teacher", "hs"): 0.0, ("teacher", "ll"): 0.0, ("distance", "ce"): 0.0,
    ("distance", "kl"): 0.0, ("distance", "mse"): -0.5, ("alpha", "0.5"): -1.0,
    ("alpha", "1"): 0.0, ("tau_t", "1"): -2.0, ("tau_t", "2"): -2.0, ("tau_t", "4"): 0.0,
    ("tau_s", "same"): 0.0, ("tau_s", "1"): 0.0,
}  # fmt: skip


def greedy_study(rng=0, n_examples=2000, seeds=(0, 1, 2)):
    sim = Simulator(additive(BASE, PLANTED), AXES, PAIRS, seeds, n_examples, rng=rng)
    sim.greedy(ORDER)
    return sim


def write_ledger(workdir, sim, strategy):
    ledger = Ledger(workdir / "ledger.sqlite")
    with ledger.db:
        for row in sim.rows:
            cols = {k: v for k, v in row.items() if k in NAMES}
            ledger.db.execute(
                f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                list(cols.values()),
            )
    ledger.close()
    import yaml

    (workdir / "manifest.resolved.yaml").write_text(yaml.safe_dump(sim.manifest(strategy)))
    return workdir


def test_public_api_on_a_greedy_ledger(tmp_path):
    sim = greedy_study()
    write_ledger(tmp_path, sim, "greedy")
    df = effects_frame(tmp_path)
    assert list(df.columns) == COLUMNS
    got = {(r.axis, r.option): r for r in df.itertuples()}
    assert set(got) == set(EXPECTED)
    for key, want in EXPECTED.items():
        assert got[key].effect == pytest.approx(want, abs=0.6), key
        assert got[key].n_pairs == len(PAIRS)
    rec = recommendation(tmp_path)
    json.dumps(rec)  # plain JSON
    assert rec["config"]["alpha"] == 1.0 and rec["config"]["tau_t"] == 4.0
    assert rec["config"]["distance"] != "mse"
    assert len(rec["leave_one_dataset_out"]) == 4
    assert np.isfinite(rec["mean_regret"]) and rec["mean_regret_interval"][0] is not None


def test_greedy_effects_are_fair_and_identical_options_cost_nothing():
    """The issue's review case: under the old analysis ll, kl and tau_s 1 each 'cost' the later
    stages' tuning (2 points); paired contrasts give them nothing, with intervals around 0."""
    sim = greedy_study()
    r = analyse(study_from_rows(sim.rows, sim.manifest("greedy")))
    assert r.cross_pair and len(r.active) == len(PAIRS)
    for axis, eff in r.axes.items():  # every contrast is around each pair's greedy optimum
        assert eff.sources() == {"sensitivity": len(PAIRS)}, axis
    df = r.effects().set_index(["axis", "option"])
    ce_kl = [df.loc["distance", o] for o in ("ce", "kl")]  # the same training: the same runs
    assert {x.verdict for x in ce_kl} == {
        "best option (chosen on validation)",
        "identical runs (every paired result equal)",
    }
    assert all(x.effect == x.ci_low == x.ci_high == 0 for x in ce_kl)
    for o in ("hs", "ll"):  # equal in truth, distinct runs: no cost detected
        row = df.loc["teacher", o]
        assert row.ci_low <= 0 <= row.ci_high and abs(row.effect) < 0.6, o
        assert not row.p_value < 0.05, o
        assert row.verdict.startswith(("best option", "no detectable difference (MDE "))
    for key in (("alpha", "0.5"), ("tau_t", "1"), ("tau_t", "2")):
        assert df.loc[key].verdict.startswith("worse by"), key
        assert df.loc[key].ci_low <= EXPECTED[key] <= df.loc[key].ci_high, key
    assert "ce and kl train identically" in " ".join(r.equivalences)


def _tau_grid(strategy, rng=3):
    """tau_t in {1, 2}, tau_s in {same, 1}: at tau_t 1 both tau_s options are one run."""
    axes = {"teacher": ["hs"], "distance": ["ce", "mse"], "alpha": [1.0], "tau_t": [1.0, 2.0],
            "tau_s": ["same", 1.0]}  # fmt: skip
    planted = {"distance": {"mse": -0.01}, "tau_s": {2.0: -0.01}, "tau_t": {2.0: -0.02}}
    pairs = PAIRS[:6]
    sim = Simulator(additive(BASE, planted), axes, pairs, (0, 1), 3000, rng=rng)
    if strategy == "grid":
        sim.grid()
    else:
        sim.greedy(["distance", "tau_t", "tau_s"])
    return analyse(study_from_rows(sim.rows, sim.manifest(strategy)))


def test_tau_s_at_tau_t_one_and_two():
    grid = _tau_grid("grid")
    tau_s = grid.axes["tau_s"]
    assert tau_s.best == 1.0 and tau_s.sources() == {"grid": 6}
    same = tau_s.option("same")
    for c in same.contrasts.values():  # tau_t 1: the same run; tau_t 2: tau_s 2 against 1
        assert len(c.couples) == 4 and sum(a is b for a, b in c.couples) == 2
    # Averaged over the settings of the other knobs: (0 + -1) / 2.
    assert same.effect == pytest.approx(-0.5, abs=0.3)
    assert grid.axes["distance"].option("mse").effect == pytest.approx(-1.0, abs=0.3)
    # Greedy: tau_t 1 wins, so around the optimum tau_s 'same' and 1 are one run.
    greedy = _tau_grid("greedy")
    assert greedy.axes["tau_t"].best == 1.0
    row = greedy.axes["tau_s"].options[1]
    assert row.test.level == "identical" and row.effect == 0.0
    assert row.verdict == "identical runs (every paired result equal)"


def test_choices_are_made_on_validation_not_test():
    """mse looks 2 points better on validation but is 2 points worse on test: the analysis must
    pick it (and report its test cost honestly), never switch to the test winner."""
    shift = {"mse": 0.04}

    def val_shift(pair, spec):
        return shift.get(spec.get("distance"), 0.0)

    planted = {"distance": {"mse": -0.02}}
    sim = Simulator(additive(BASE, planted), AXES, PAIRS, (0, 1), 1000, rng=5, val_shift=val_shift)
    sim.greedy(ORDER)
    r = analyse(study_from_rows(sim.rows, sim.manifest("greedy")))
    dist = r.axes["distance"]
    assert dist.best == "mse"
    ce = dist.option("ce")
    lo, hi = ce.interval
    assert lo <= 2.0 <= hi and ce.verdict.startswith("better by")
    assert r.recommendation["config"]["distance"] == "mse"
    assert r.recommendation["mean_regret"] == pytest.approx(0.0, abs=0.4)  # pairs chose mse too


def _calibration_study(rng, n_pairs, seed_sd, spread, contrasts=None, seeds=(0, 1), n_ex=300):
    """One planted study: ce vs mse, mse's true effect mu + N(0, spread) per pair, `seeds`
    seeds, `n_ex` test examples. The non-best option's test and the truth it estimates; its
    pair contrasts go into `contrasts` (a list) when one is given."""
    mu = -0.01
    pairs = [(f"d{i}", "s") for i in range(n_pairs)]
    delta = {p: mu + rng.normal(0, spread) for p in pairs}

    def truth(pair, spec):
        if "baseline" in spec:
            return 0.6
        return 0.62 + (delta[pair] if spec["distance"] == "mse" else 0.0)

    axes = {"teacher": ["hs"], "distance": ["ce", "mse"], "alpha": [1.0], "tau_t": [1.0],
            "tau_s": ["same"]}  # fmt: skip
    sim = Simulator(truth, axes, pairs, seeds, n_ex, seed_sd=seed_sd, rng=rng, as_json=False)
    sim.grid()
    eff = axis_effect(study_from_rows(sim.rows, sim.manifest("grid")), "distance", pairs)
    row = next(o for o in eff.options if not o.is_best)
    if contrasts is not None:
        contrasts.extend(row.contrasts.values())
    truth_pairs = mu if n_pairs >= 5 else float(np.mean(list(delta.values())))
    want = truth_pairs if row.option == "mse" else -truth_pairs
    return row.test, want


@pytest.mark.parametrize(
    ("n_pairs", "seed_sd", "spread", "seeds", "n_ex", "level"),
    [
        (6, 0.004, 0.004, (0, 1), 300, "pairs"),
        (3, 0.0, 0.004, (0,), 2000, "examples"),
        (3, 0.004, 0.004, (0, 1), 300, "seeds"),
        (2, 0.01, 0.0, (0, 1, 2), 2000, "seeds"),  # the demo's first design: seed sd 1 point
    ],
)
def test_calibration_over_simulated_studies(n_pairs, seed_sd, spread, seeds, n_ex, level):
    """95% intervals cover the planted effect 90-99% of the time, estimates are unbiased:
    across pairs (truth: the mean effect of pairs like these); within pairs (truth: these
    pairs' mean effect) with one seed from test examples (no seed noise in the runs, which that
    level leaves out), and with several seeds Student-t over the seed contrasts (seed noise
    in)."""
    rng = np.random.default_rng(11)
    cover, err = [], []
    for _ in range(200):
        test, want = _calibration_study(rng, n_pairs, seed_sd, spread, None, seeds, n_ex)
        assert test.level == level
        cover.append(test.lo <= want <= test.hi)
        err.append(test.estimate - want)
    assert 0.90 <= np.mean(cover) <= 0.99, np.mean(cover)
    assert abs(np.mean(err)) < 0.001  # 0.1 point
    assert np.std(err) > 0.001  # the studies do differ


def test_fewer_than_five_pairs_make_no_cross_pair_claim(tmp_path):
    pairs = PAIRS[:3]
    sim = Simulator(additive(BASE, PLANTED), AXES, pairs, (0,), 2000, rng=2)
    sim.greedy(ORDER)
    r = analyse(study_from_rows(sim.rows, sim.manifest("greedy")))
    assert not r.cross_pair
    verdicts = [o.verdict for e in r.axes.values() for o in e.options if o.test]
    assert verdicts and all(
        v.startswith("these pairs only, test-example noise: ") or v.startswith("identical")
        for v in verdicts
    )
    from kdjax.analysis.gaps import find_gaps
    from kdjax.analysis.headline import headline

    text = " ".join(headline(r, find_gaps(r)))
    assert "No cross-pair claim can be made" in text
    assert "one seed: seed-to-seed variation is not included" in text
    # Without per-example outcomes, three pairs support no claim at all.
    for row in sim.rows:
        row["result_json"] = json.dumps({"metric": "accuracy"})
    bare = analyse(study_from_rows(sim.rows, sim.manifest("greedy")))
    df = bare.effects()
    rest = df[~df.verdict.str.startswith(("best option", "identical"))]
    assert len(rest) and rest.verdict.str.startswith("no claim: 3 pair(s) (< 5)").all()
    assert rest.p_value.isna().all() and rest.ci_low.isna().all()


def test_stuck_pair_is_reported_apart_and_teacher_checkpoints_equal():
    sim = greedy_study(n_examples=500, seeds=(0, 1))
    stuck = PAIRS[0]
    for row in sim.rows:
        if (row["dataset"], row["student"]) == stuck:  # one prediction pattern everywhere
            row["test_metric"] = 0.5
            ids = [f"{stuck[0]}-{i}" for i in range(500)]
            out = {"ids": ids, "values": [float(i % 2) for i in range(500)]}
            row["result_json"] = json.dumps({"metric": "accuracy", "test_outcomes": out})
    ckpts = {"hs": {"epoch": 2}, "ll": {"epoch": 2}}
    sim.rows.append(
        {"run_id": "t", "kind": "teacher", "status": "done", "dataset": "d1", "seed": 0,
         "val_metric": 0.9, "test_metric": 0.9, "metric_name": "accuracy",
         "result_json": json.dumps({"checkpoints": ckpts})}
    )  # fmt: skip
    r = analyse(study_from_rows(sim.rows, sim.manifest("greedy")))
    assert list(r.stuck) == [stuck] and stuck not in r.active
    assert "never moves" in r.stuck[stuck] and "so does every no-KD run" in r.stuck[stuck]
    assert all(o.n_pairs <= len(PAIRS) - 1 for e in r.axes.values() for o in e.options)
    assert r.recommendation["n_pairs"] == len(PAIRS) - 1
    assert any("hs and ll are the same epoch on d1" in n for n in r.equivalences)


def test_kd_gain_against_a_tuned_baseline():
    """The best KD configuration is compared with the validation-best baseline learning rate,
    the default configuration with the untuned baseline."""
    add = additive(BASE, PLANTED)

    def truth(pair, spec):
        if "baseline" in spec:  # the untuned lr is 5e-5; 1e-4 is 1.5 points better
            return BASE[pair] + (0.005 if spec["baseline"] == 1e-4 else -0.01)
        return add(pair, spec)

    sim = Simulator(truth, AXES, PAIRS, (0, 1), 3000, rng=4, lrs=(1e-4, 2e-5))
    sim.greedy(ORDER)
    r = analyse(study_from_rows(sim.rows, sim.manifest("greedy")))
    for g in r.gains:
        assert g.baseline_lr == 1e-4
        # default: hs ce 0.5 1 same = base - 1 point; untuned baseline base - 1 point
        assert g.default.mean == pytest.approx(0.0, abs=0.03)
        # best KD (tau_t 4, alpha 1) = base + 2 points; tuned baseline base + 0.5
        assert g.best.mean == pytest.approx(0.015, abs=0.03)
        assert g.best_test.level == "seeds"  # two seeds: seed noise is in the interval


def test_shared_distances_are_one_run_under_two_names():
    """`search.equivalent_distances: share`: kl rows never reach the ledger; kl is reported as
    ce's runs, an identical option."""
    sim = greedy_study(n_examples=300, seeds=(0,))
    rows = [r for r in sim.rows if r["distance"] != "kl"]
    manifest = {**sim.manifest("greedy"), "search": {"strategy": "greedy",
                                                     "equivalent_distances": "share"}}  # fmt: skip
    r = analyse(study_from_rows(rows, manifest))
    kl = r.axes["distance"].option("kl")
    assert kl.n_pairs == len(PAIRS)
    assert kl.is_best or kl.verdict == "identical runs (every paired result equal)"
    assert any("run once and reported under both names" in n for n in r.equivalences)


def test_corpus_f1_from_counts_is_bootstrapped_over_examples():
    """Entity F1 is computed from summed (tp, n_pred, n_gold) counts: the per-pair interval
    resamples sentences (Poisson weights) and recomputes the corpus F1 of both runs."""
    from kdjax.analysis.load import Cell, Outcomes
    from kdjax.analysis.stats import PairContrast, within_pairs

    rng = np.random.default_rng(0)
    n = 400
    gold = rng.integers(1, 4, n).astype(float)

    def run(recall):
        tp = rng.binomial(gold.astype(int), recall).astype(float)
        counts = np.stack([tp, tp + rng.integers(0, 2, n), gold], axis=1)
        out = Outcomes(tuple(map(str, range(n))), None, counts)
        cell = Cell()
        cell.test[0], cell.val[0], cell.outcomes[0] = float(out.metric()), 0.0, out
        return cell

    a, b = run(0.9), run(0.8)
    f1 = [2 * c.outcomes[0].counts[:, 0].sum() / c.outcomes[0].counts[:, 1:].sum() for c in (a, b)]
    assert a.test[0] == pytest.approx(f1[0]) and b.test[0] == pytest.approx(f1[1])
    t = within_pairs([PairContrast("ner", a, b)], n_boot=400, seed=1)
    assert t.level == "examples" and t.estimate == pytest.approx(f1[0] - f1[1])
    assert 0.003 < t.se < 0.03 and t.lo < t.estimate < t.hi and t.p < 0.05


def test_seed_variance_is_pooled_over_pairs():
    """With several seeds the within-pair interval is Student-t over the seed contrasts, the
    residual variance pooled over the pairs given as `pool` (df = sum of seeds - 1)."""
    from scipy import stats

    from kdjax.analysis.load import Cell
    from kdjax.analysis.stats import PairContrast, within_pairs

    def contrast(values):
        a, b = Cell(), Cell()
        for s, v in enumerate(values):
            a.test[s], a.val[s], b.test[s], b.val[s] = 0.5 + v, 0.0, 0.5, 0.0
        return PairContrast("d", a, b)

    c1, c2 = contrast([0.01, 0.02, 0.03]), contrast([0.0, 0.02, 0.04])
    alone = within_pairs([c1])  # residual variance 1e-4 on 2 df
    se = np.sqrt(1e-4 / 3)
    assert alone.level == "seeds" and alone.se == pytest.approx(se)
    assert alone.hi - alone.estimate == pytest.approx(stats.t(2).ppf(0.975) * se)
    pooled = within_pairs([c1], pool=[c1, c2])  # (2e-4 + 8e-4) / 4 on 4 df
    se = np.sqrt(2.5e-4 / 3)
    assert pooled.se == pytest.approx(se) and pooled.estimate == pytest.approx(0.02)
    assert pooled.hi - pooled.estimate == pytest.approx(stats.t(4).ppf(0.975) * se)
    assert pooled.mde == pytest.approx((stats.t(4).ppf(0.975) + stats.t(4).ppf(0.8)) * se)
    both = within_pairs([c1, c2])
    assert both.se == pytest.approx(np.sqrt(2 * 2.5e-4 / 3) / 2)
    assert both.p == pytest.approx(2 * stats.t(4).sf(0.02 / both.se))
