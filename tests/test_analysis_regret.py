"""The recommendation's regrets and the rank tests, checked by simulation with planted answers
(pure numpy, no training).

Regret studies: four configurations on P pairs; REC (ce, tau_t 1) scores `base` everywhere,
each pair's own best is (mse, tau_t 1) on even pairs and (ce, tau_t 2) on odd ones, `r_p` above
REC, with r_p = mu + N(0, spread) planted per pair; the other configurations are 5-6 points
lower, so REC is always the one configuration recommended and its true regret on pair p is
r_p (0 where validation picks REC as the pair's best). The runs draw seed noise (validation and
test together), validation noise and per-example 0/1 test outcomes (tests/analysis_helpers.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from analysis_helpers import Simulator

from kdjax.analysis.crossfit import held_out_choice, val_without
from kdjax.analysis.load import study_from_rows
from kdjax.analysis.recommend import recommend, regrets, universal
from kdjax.analysis.stats import compare_cells, within_pairs

AXES = {"teacher": ["hs"], "distance": ["ce", "mse"], "alpha": [1.0], "tau_t": [1.0, 2.0],
        "tau_s": ["same"]}  # fmt: skip
REC = ("ce", 1.0)
BASE = 0.6


def _key(spec):
    return spec["distance"], spec["tau_t"]


def regret_study(rng, n_pairs, mu, spread, seeds, seed_sd, n_ex=1000, outcomes=True, tie=False):
    """One planted study; returns (recommendation, study, pairs, truth). `tie`: both
    alternatives score base + r_p on every pair (several configurations near each pair's best)."""
    pairs = [(f"d{i}", "s") for i in range(n_pairs)]
    r = {p: mu + rng.normal(0, spread) for p in pairs}

    def truth(pair, spec):
        if "baseline" in spec:
            return BASE - 0.1
        k = _key(spec)
        if k == REC:
            return BASE
        if k == ("mse", 2.0):
            return BASE - 0.06
        mine = (k == ("mse", 1.0)) == (int(pair[0][1:]) % 2 == 0)
        return BASE + r[pair] if tie or mine else BASE - 0.05

    sim = Simulator(
        truth, AXES, pairs, seeds, n_ex, seed_sd=seed_sd, rng=rng, as_json=False,
        outcomes=outcomes,
    )  # fmt: skip
    sim.grid()
    study = study_from_rows(sim.rows, sim.manifest("grid"))
    return recommend(study, pairs, {}, n_boot=100), study, pairs, truth


def true_regrets(study, pairs, truth, rec) -> dict:
    """Per pair, the true regret the report estimates: the mean over seeds of the true score of
    the pair's best minus the recommendation's, each chosen for that seed on the other seeds'
    validation (one seed: the validation choices themselves; see kdjax/analysis/crossfit.py)."""
    chosen = next(c for c in study.configs if c.label() == rec["label"])
    held = held_out_choice(study, pairs, universal(study, pairs))

    def score(p, c):
        return truth(p, {"distance": c["distance"], "tau_t": c["tau_t"]})

    out = {}
    for p in pairs:
        cells = study.candidates(p)
        seeds = sorted(cells[chosen].test)
        if len(seeds) < 2:
            out[p] = score(p, study.best(p)) - score(p, chosen)
            continue
        best = [max(cells, key=lambda k, s=s: val_without(cells[k], s)) for s in seeds]
        pick = zip(best, seeds, strict=True)
        out[p] = float(np.mean([score(p, b) - score(p, held[s]) for b, s in pick]))
    return out


def _calibrate(n_studies, n_pairs, mu, spread, seeds, seed_sd, **kw):
    """Coverage and errors (points) of the mean- and worst-regret intervals over studies."""
    rng = np.random.default_rng(5)
    out = {k: [] for k in ("cover", "err", "kind", "wcover", "wold", "werr")}
    for _ in range(n_studies):
        rec, study, pairs, truth = regret_study(rng, n_pairs, mu, spread, seeds, seed_sd, **kw)
        true = true_regrets(study, pairs, truth, rec)
        # Across pairs (>= 5): pairs like these, whose mean regret is mu; else these pairs.
        want = 100 * (mu if n_pairs >= 5 else np.mean(list(true.values())))
        lo, hi = rec["mean_regret_interval"]
        out["cover"].append(lo <= want <= hi)
        out["err"].append(rec["mean_regret"] - want)
        out["kind"].append(rec["mean_regret_interval_kind"])
        worst = 100 * max(true.values())
        wlo, whi = rec["worst_regret_interval"]
        out["wcover"].append(wlo <= worst <= whi)
        out["werr"].append(rec["worst_regret"] - worst)
        # What the report printed before: the largest estimate's pair's own 95% interval.
        reg = regrets(study, next(c for c in study.configs if c.label() == rec["label"]), pairs)
        top = max(reg, key=lambda p: reg[p].mean)
        old = within_pairs([reg[top]], 100, 0, list(reg.values()))
        out["wold"].append(old.lo * 100 <= worst <= old.hi * 100)
    return {k: np.asarray(v) for k, v in out.items()}


MEAN_DESIGNS = [  # pairs, mu, spread, seeds, seed sd, test examples, outcomes, level, studies
    pytest.param(6, 0.02, 0.004, (0, 1), 0.003, 1000, False, "Student-t over pairs", 200),
    pytest.param(3, 0.02, 0.004, (0, 1), 0.003, 2000, True, "Student-t over seeds", 200),
    pytest.param(3, 0.02, 0.004, (0,), 0.0, 4000, True, "bootstrap over test examples", 200,
                 marks=pytest.mark.slow),
    pytest.param(2, 0.02, 0.0, (0, 1, 2), 0.01, 2000, True, "Student-t over seeds", 400,
                 marks=pytest.mark.slow),  # the demo's first design: seed sd 1 point
    pytest.param(10, 0.02, 0.01, (0, 1, 2), 0.003, 1000, False, "Student-t over pairs", 200,
                 marks=pytest.mark.slow),
]  # fmt: skip


@pytest.mark.parametrize(
    ("n_pairs", "mu", "spread", "seeds", "seed_sd", "n_ex", "outcomes", "level", "n_studies"),
    MEAN_DESIGNS,
)
def test_mean_regret_interval_covers_the_planted_regret(
    n_pairs, mu, spread, seeds, seed_sd, n_ex, outcomes, level, n_studies
):
    """95% intervals of the mean regret cover the planted mean regret in 90-99% of 200 (or
    400) studies. |bias| < 0.1 point: a 0.1-point systematic error is a twentieth of the planted
    regret and far below any MDE these designs have, and each design is sized so that the mean
    error's Monte Carlo SE is under 0.05 point (checked), making 0.1 point two SEs or more."""
    res = _calibrate(n_studies, n_pairs, mu, spread, seeds, seed_sd, n_ex=n_ex, outcomes=outcomes)
    assert all(level in k for k in res["kind"]), set(res["kind"])
    assert 0.90 <= res["cover"].mean() <= 0.99, res["cover"].mean()
    assert res["err"].std() / np.sqrt(len(res["err"])) < 0.05  # the bias check can see 0.1
    assert abs(res["err"].mean()) < 0.1, res["err"].mean()
    assert res["err"].std() > 0.1  # the studies do differ


@pytest.mark.parametrize(
    ("n_pairs", "spread", "seeds", "seed_sd", "outcomes"),
    [
        (6, 0.0, (0, 1), 0.003, False),  # equal regrets: the winner's curse is largest
        (4, 0.01, (0, 1), 0.003, True),  # one pair usually dominates
    ],
)
def test_worst_regret_interval_covers_the_largest_true_regret(
    n_pairs, spread, seeds, seed_sd, outcomes
):
    """The worst-regret interval claims to hold the LARGEST TRUE per-pair regret with at least
    95% probability (Bonferroni over pairs). The largest estimate is biased upward, and the
    interval of the pair it picks (what the report used to print) covers too rarely when pairs
    are alike."""
    res = _calibrate(200, n_pairs, 0.02, spread, seeds, seed_sd, n_ex=1000, outcomes=outcomes)
    # >= 95% claimed; 200 studies: 0.93 is 1.3 Monte Carlo SEs below 0.95.
    assert res["wcover"].mean() >= 0.93, res["wcover"].mean()
    assert res["werr"].mean() > 0  # the point value (largest estimate) is biased upward
    if spread == 0:
        assert res["wold"].mean() < 0.93, res["wold"].mean()
        assert res["werr"].mean() > 0.5


def test_worst_regret_report_says_what_it_claims():
    rec, *_ = regret_study(np.random.default_rng(0), 6, 0.02, 0.004, (0, 1), 0.003)
    kind = rec["worst_regret_interval_kind"]
    assert "largest true per-pair regret" in kind and "Bonferroni over 6 pairs" in kind
    assert "biased upward" in kind
    lo, hi = rec["worst_regret_interval"]
    assert lo < hi and max(rec["per_pair_regret"].values()) == rec["worst_regret"]


def test_a_configuration_identical_to_every_pairs_best_has_no_regret():
    """REC best everywhere by 5 points (validation noise ~0.6 point): each pair's best is REC
    itself, so the regret is exactly 0 with the exact interval [0, 0], never significant; in
    every one of 200 studies."""
    rng = np.random.default_rng(7)
    for i in range(200):
        seeds = ((0,), (0, 1), (0, 1, 2))[i % 3]
        rec, study, pairs, _ = regret_study(rng, 2 + i % 6, -0.05, 0.0, seeds, 0.005, 300)
        assert rec["label"] == "hs ce alpha=1 tau_t=1 tau_s=same"
        assert rec["mean_regret"] == 0 and rec["mean_regret_interval"] == [0.0, 0.0]
        assert rec["worst_regret"] == 0 and rec["worst_regret_interval"] == [0.0, 0.0]
        assert rec["mean_regret_interval_kind"] == "exact (identical runs)"
        assert all(x["regret"] == 0 for x in rec["leave_one_dataset_out"])


def test_twin_runs_of_the_best_have_no_regret_and_no_significance():
    """ce and kl train alike (the same runs under two names), mse is 5 points worse: against
    each pair's best (ce), kl's regret is 0 with the exact interval [0, 0] and p = 1, over pairs
    and within pairs, with one seed or several."""
    axes = {**AXES, "distance": ["ce", "kl", "mse"], "tau_t": [1.0]}
    rng = np.random.default_rng(8)

    def truth(pair, spec):
        return BASE - (0.05 if spec.get("distance") == "mse" else 0.0)

    for n_pairs, seeds in [(6, (0, 1)), (3, (0,)), (2, (0, 1, 2))]:
        pairs = [(f"d{i}", "s") for i in range(n_pairs)]
        sim = Simulator(truth, axes, pairs, seeds, 500, seed_sd=0.01, rng=rng, as_json=False)
        sim.grid()
        study = study_from_rows(sim.rows, sim.manifest("grid"))
        kl = next(c for c in study.configs if c["distance"] == "kl")
        assert all(study.best(p)["distance"] == "ce" for p in pairs)
        t = compare_cells(list(regrets(study, kl, pairs).values()))
        assert t.level == "identical" and t.p == 1.0 and t.lo == t.hi == 0.0
        assert t.verdict().startswith("identical runs")


def lodo_study(rng, seeds=(0, 1, 2), n_ex=4000):
    """Four datasets, two students each. A (ce, 1) is best on every dataset but d0, where B
    (mse, 1) is 2 points better than A; elsewhere B is 3 points worse than A."""
    pairs = [(f"d{i}", s) for i in range(4) for s in ("small", "big")]

    def truth(pair, spec):
        if "baseline" in spec:
            return BASE - 0.1
        k = _key(spec)
        if k == ("ce", 1.0):
            return BASE
        if k == ("mse", 1.0):
            return BASE + (0.02 if pair[0] == "d0" else -0.03)
        return BASE - 0.05

    sim = Simulator(truth, AXES, pairs, seeds, n_ex, seed_sd=0.003, rng=rng, as_json=False,
                    outcomes=False)  # fmt: skip
    sim.grid()
    study = study_from_rows(sim.rows, sim.manifest("grid"))
    return recommend(study, pairs, {}, n_boot=100), study, pairs


def test_leave_one_dataset_out_reports_the_planted_regret():
    """Without d0, A is chosen (B loses 3 points elsewhere) and scored on d0 it loses the
    planted 2 points to d0's own best (B); without any other dataset A is still chosen (mean
    validation regret 0.67 point against B's 2) and loses nothing on the dataset left out. Over 100
    studies the d0 regret's mean is within 0.15 point of 2 (its per-study SD is ~0.5 point, so
    the Monte Carlo SE of the mean is ~0.05)."""
    rng = np.random.default_rng(9)
    on_d0 = []
    for _ in range(100):
        rec, study, pairs = lodo_study(rng)
        lodo = {x["dataset"]: x for x in rec["leave_one_dataset_out"]}
        assert list(lodo) == ["d0", "d1", "d2", "d3"]
        for d, x in lodo.items():
            assert (x["config"]["distance"], x["config"]["tau_t"]) == ("ce", 1.0)
            if d != "d0":
                assert x["regret"] == 0.0
        chosen = next(c for c in study.configs if (c["distance"], c["tau_t"]) == ("ce", 1.0))
        reg = regrets(study, chosen, [p for p in pairs if p[0] == "d0"])
        assert lodo["d0"]["regret"] == pytest.approx(100 * np.mean([c.mean for c in reg.values()]))
        on_d0.append(lodo["d0"]["regret"])
    assert abs(np.mean(on_d0) - 2.0) < 0.15, np.mean(on_d0)
    assert np.std(on_d0) > 0.05


def _table(x: np.ndarray) -> dict:
    return {f"p{i}": {f"o{j}": float(v) for j, v in enumerate(row)} for i, row in enumerate(x)}


def _null_tables(rng, n_pairs, k, n, step=None):
    """`n` score tables [pair, treatment] with no treatment effect: a pair effect (pairs differ
    a lot) plus noise; `step`: scores rounded to it (accuracy on a finite test set: ties)."""
    for _ in range(n):
        x = 60 + rng.normal(0, 5, (n_pairs, 1)) + rng.normal(0, 1, (n_pairs, k))
        yield np.round(x / step) * step if step else x


@pytest.mark.parametrize(
    ("n_pairs", "k", "step"), [(5, 3, None), (8, 4, None), (12, 5, 0.5), (6, 3, 1.0)]
)
def test_friedman_and_nemenyi_hold_their_level_under_the_null(n_pairs, k, step):
    """No treatment effect: the Friedman test rejects at 0.05 in 2-8% of 300 tables (300
    tables: Monte Carlo SE 1.3 points around 5%), and the Nemenyi post-hoc family (the
    critical-difference diagram) declares any pair of treatments different in at most 8%."""
    from kdjax.analysis.ranks import ranking

    rng = np.random.default_rng(n_pairs * 10 + k)
    rej, fam = [], []
    for x in _null_tables(rng, n_pairs, k, 300, step):
        r = ranking("t", _table(x))
        rej.append(r.friedman_p < 0.05)
        ph = r.posthoc.to_numpy()
        fam.append((ph[np.triu_indices(k, 1)] < 0.05).any())
    assert 0.02 <= np.mean(rej) <= 0.08, np.mean(rej)
    assert np.mean(fam) <= 0.08, np.mean(fam)


def test_friedman_and_nemenyi_find_a_planted_ordering():
    """Treatment j scores j points above treatment 0 on every pair (noise SD 0.5): the Friedman
    test rejects, the average ranks follow the planted order, and Nemenyi separates the ends."""
    from kdjax.analysis.ranks import friedman_text, ranking

    rng = np.random.default_rng(1)
    for _ in range(20):
        x = 60 + rng.normal(0, 5, (8, 1)) + np.arange(4) + rng.normal(0, 0.5, (8, 4))
        r = ranking("t", _table(x))
        assert r.friedman_p < 0.001
        assert list(r.ranks.index) == ["o3", "o2", "o1", "o0"]
        assert r.posthoc.loc["o0", "o3"] < 0.05
    assert friedman_text(r).startswith("Friedman test over 8 pairs: p = ")


@pytest.mark.parametrize("n_pairs", [6, 10, 13])
def test_sign_test_size_is_the_exact_binomial_size(n_pairs):
    """Two treatments: the exact sign test over pairs. Discrete, so under the null it rejects
    at 0.05 with probability exactly P(two-sided binomial p < 0.05) <= 0.05 (e.g. 3.1% with 6
    pairs, 2.1% with 10, 2.2% with 13); 400 tables agree within 3 Monte Carlo SEs."""
    from scipy import stats

    from kdjax.analysis.ranks import ranking

    size = sum(
        stats.binom.pmf(w, n_pairs, 0.5)
        for w in range(n_pairs + 1)
        if stats.binomtest(w, n_pairs).pvalue < 0.05
    )
    assert size <= 0.05
    rng = np.random.default_rng(n_pairs)
    rej = [ranking("t", _table(x)).friedman_p < 0.05 for x in _null_tables(rng, n_pairs, 2, 400)]
    se = np.sqrt(size * (1 - size) / 400)
    assert abs(np.mean(rej) - size) <= 3 * se + 1e-9, (np.mean(rej), size)
    planted = 60 + rng.normal(0, 5, (n_pairs, 1)) + np.array([[1.0, 0.0]])
    assert ranking("t", _table(planted)).friedman_p < 0.05  # better on every pair: rejects


def test_near_tied_configurations_give_no_regret_from_the_winners_curse():
    """Three configurations tie in truth on every pair (true regret 0) with 1 point of seed
    noise, which moves a run's validation and test together. Scored on the same runs'
    validation choices, each pair's best looks +0.3 point better than the recommendation on
    average; cross-fitted over seeds (kdjax/analysis/crossfit.py) the mean regret is unbiased
    (|bias| < 0.1 point, Monte Carlo SE < 0.05) and its interval covers 0 in 90-99% of 200
    studies."""
    from kdjax.analysis.stats import PairContrast

    rng = np.random.default_rng(12)
    cover, err, in_sample = [], [], []
    for _ in range(200):
        rec, study, pairs, _ = regret_study(
            rng, 6, 0.0, 0.0, (0, 1, 2), 0.01, 2000, outcomes=False, tie=True
        )
        lo, hi = rec["mean_regret_interval"]
        cover.append(lo <= 0 <= hi)
        err.append(rec["mean_regret"])
        chosen = next(c for c in study.configs if c.label() == rec["label"])
        same = [study.candidates(p) for p in pairs]
        in_sample.append(
            100 * np.mean([PairContrast("d", c[study.best(p)], c[chosen]).mean
                           for p, c in zip(pairs, same, strict=True)])
        )  # fmt: skip
    assert np.mean(in_sample) > 0.2, np.mean(in_sample)  # what the report printed before
    assert np.std(err) / np.sqrt(len(err)) < 0.05
    assert abs(np.mean(err)) < 0.1, np.mean(err)
    assert 0.90 <= np.mean(cover) <= 0.99, np.mean(cover)


def _null_gain_study(rng, n_pairs=6, seeds=(0, 1, 2), seed_sd=0.01, n_ex=4000, lrs=()):
    """KD and no KD score the same everywhere (every configuration and learning rate)."""
    pairs = [(f"d{i}", "s") for i in range(n_pairs)]
    sim = Simulator(lambda p, s: BASE, AXES, pairs, seeds, n_ex, seed_sd=seed_sd, rng=rng,
                    as_json=False, outcomes=False, lrs=lrs)  # fmt: skip
    sim.grid()
    return study_from_rows(sim.rows, sim.manifest("grid")), pairs


@pytest.fixture
def no_gc_in_holm(monkeypatch):
    """statsmodels' Holm correction runs gc.collect() on every call (60 ms in a large test
    process); hundreds of simulated tables need it skipped. The p-values are unchanged."""
    import gc

    monkeypatch.setattr(gc, "collect", lambda *a: 0)


@pytest.mark.parametrize("lrs", [pytest.param((), marks=pytest.mark.slow), (1e-4,)])
def test_kd_gain_p_values_hold_their_family_wise_level_under_the_null(lrs, no_gc_in_holm):
    """No KD gain anywhere (1 point of seed noise, 3 seeds, 6 pairs): each column of the
    KD-gain table (Holm-adjusted over pairs) flags some pair in at most 8% of 300 studies (5%
    nominal; Monte Carlo SE 1.3 points). Measured: default 2-3%, best KD against the (tuned)
    baseline 3-6%. (Cross-fitting the best KD configuration over seeds, as the regrets do,
    flagged 8-10% here: its seed contrasts come from different configurations chosen on
    overlapping seeds and are correlated, so the pooled seed variance is too small.)"""
    from kdjax.analysis.recommend import kd_gain
    from kdjax.analysis.stats import holm

    rng = np.random.default_rng(13)
    fam_default, fam_best = [], []
    for _ in range(300):
        study, pairs = _null_gain_study(rng, lrs=lrs)
        gains = kd_gain(study, pairs, n_boot=100)
        assert all(g.default_test.level == g.best_test.level == "seeds" for g in gains)
        for fam, col in ((fam_default, "default_test"), (fam_best, "best_test")):
            adj = holm([getattr(g, col).p for g in gains])
            fam.append(any(p < 0.05 for p in adj))
    assert np.mean(fam_default) <= 0.08, np.mean(fam_default)
    assert np.mean(fam_best) <= 0.08, np.mean(fam_best)


def effects_table_null_rate(n: int, seed: int = 14) -> float:
    """Share of `n` null grid studies (6 pairs, 2 seeds, every option scoring the same) in
    which the effects table's Holm-adjusted p-values flag some option at 0.05."""
    from kdjax.analysis.effects import all_axis_effects, frame

    axes = {**AXES, "distance": ["ce", "mse", "cos"], "alpha": [0.5, 1.0], "tau_t": [1.0]}
    rng = np.random.default_rng(seed)
    fam = []
    for _ in range(n):
        pairs = [(f"d{i}", "s") for i in range(6)]
        sim = Simulator(lambda p, s: BASE, axes, pairs, (0, 1), 1000, seed_sd=0.01, rng=rng,
                        as_json=False, outcomes=False)  # fmt: skip
        sim.grid()
        df = frame(all_axis_effects(study_from_rows(sim.rows, sim.manifest("grid")), 100))
        fam.append(bool((df.p_value.dropna() < 0.05).any()))
    return float(np.mean(fam))


def test_effects_table_holds_its_family_wise_level_under_the_null(no_gc_in_holm):
    """Every option scores the same: the effects table's Holm-adjusted p-values (one family
    per table) flag some option in at most 8% of 300 studies."""
    rate = effects_table_null_rate(300)
    assert rate <= 0.08, rate
