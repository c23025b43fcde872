"""Coverage and bias of the analysis's 95% intervals over simulated studies with planted answers.

Each study: two distances (ce, mse) on P pairs, S seeds (2 unless stated), N test examples
per dataset (300 unless stated) with 0/1 outcomes; mse's true effect is -1 point plus a
per-pair spread; seed noise moves validation and test together. The truth is the mean effect
of pairs like these (P >= 5) or of these pairs (P < 5: Student-t over the seeds' contrasts with
the seed variance pooled over pairs, or test-example noise only with one seed). Runs the same
simulator as tests/test_analysis_effects.py (tests/analysis_helpers.py).

Baseline in the same run: a three-level percentile bootstrap (resample pairs, then seeds
within each pair, then test examples within each seed) on the same studies' contrasts. Its
inner levels count the seed and test-example noise a second time (each pair's contrast
already contains them), so its intervals are too wide when pairs agree, while with few pairs
the percentile interval is too narrow; the report uses Student-t over pairs instead (>= 5
pairs) and Student-t over seed contrasts within pairs (< 5; a test-example bootstrap with one
seed). The three-level bootstrap needs two seeds: with one it is not computed (null).

The recommendation and the rank tests (`--part regret`, `--part ranks`): per design, the
coverage and bias of the mean-regret interval, the coverage of the worst-regret interval (the
largest true per-pair regret) next to the old one (the interval of the pair whose estimate came
out largest), the near-tie design's bias with and without cross-fitting, and the null rejection
rates of the Friedman, Nemenyi and sign tests and of the Holm-adjusted effects and KD-gain
tables (tests/test_analysis_regret.py).

    python benchmarks/analysis_calibration.py [--studies 400] [--part effects|regret|ranks|all]

Prints one JSON line per design and quantity.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_analysis_effects import _calibration_study  # noqa: E402
from test_analysis_regret import (  # noqa: E402
    _calibrate,
    _null_gain_study,
    _null_tables,
    _table,
    regret_study,
)

DESIGNS = [  # (pairs, seed noise sd, per-pair spread of the effect (fractions), seeds, examples)
    (6, 0.004, 0.004, 2, 300),
    (5, 0.004, 0.0, 2, 300),
    (12, 0.004, 0.0, 2, 300),
    (12, 0.002, 0.01, 2, 300),
    (4, 0.003, 0.0, 2, 300),
    (3, 0.0, 0.004, 2, 300),
    (3, 0.004, 0.004, 2, 300),
    (1, 0.0, 0.0, 2, 300),
    (2, 0.01, 0.0, 3, 2000),  # the demo's design: 2 pairs, 3 seeds, seed sd 1 point
    (1, 0.01, 0.0, 3, 2000),
    (3, 0.0, 0.004, 1, 2000),  # one seed: test-example noise only (no seed noise planted)
]


def three_level_bootstrap(contrasts: list, n_boot: int, rng: np.random.Generator) -> tuple:
    """Percentile 95% interval of the mean contrast, resampling pairs, then seeds, then test
    examples (vectorised over resamples)."""
    diffs = []  # per pair: [seeds, examples] per-example differences a - b
    for c in contrasts:
        diffs.append(np.stack([a.values - b.values for a, b in c.outcome_runs()]))
    n_pairs = len(diffs)
    total = np.zeros(n_boot)
    pick = rng.integers(0, n_pairs, (n_boot, n_pairs))
    for k in range(n_pairs):
        d = [diffs[i] for i in pick[:, k]]
        n_seeds, n = d[0].shape
        seeds = rng.integers(0, n_seeds, (n_boot, n_seeds))
        ex = rng.integers(0, n, (n_boot, n_seeds, n))
        stacked = np.stack(d)  # [boot, seeds, examples]
        rows = np.take_along_axis(stacked, seeds[:, :, None], axis=1)
        total += np.take_along_axis(rows, ex, axis=2).mean(axis=(1, 2))
    lo, hi = np.quantile(total / n_pairs, [0.025, 0.975])
    return float(lo), float(hi)


REGRET_DESIGNS = [  # pairs, per-pair spread, seeds, seed sd, test examples, outcomes kept
    (6, 0.004, (0, 1), 0.003, 1000, False),
    (6, 0.0, (0, 1), 0.003, 1000, False),
    (10, 0.01, (0, 1, 2), 0.003, 1000, False),
    (3, 0.004, (0, 1), 0.003, 2000, True),
    (3, 0.004, (0,), 0.0, 4000, True),
    (4, 0.01, (0, 1), 0.003, 1000, True),
    (2, 0.0, (0, 1, 2), 0.01, 2000, True),
]


def regret_lines(n: int) -> None:
    """Mean- and worst-regret calibration (planted mean regret 2 points), then the near-tie
    design (true regret 0) with and without cross-fitting."""
    from kdjax.analysis.stats import PairContrast

    for n_pairs, spread, seeds, seed_sd, n_ex, outcomes in REGRET_DESIGNS:
        t0 = time.perf_counter()
        r = _calibrate(n, n_pairs, 0.02, spread, seeds, seed_sd, n_ex=n_ex, outcomes=outcomes)
        common = {"pairs": n_pairs, "spread_pt": spread * 100, "seeds": len(seeds),
                  "seed_sd_pt": seed_sd * 100, "test_examples": n_ex, "studies": n}  # fmt: skip
        secs = round(time.perf_counter() - t0, 2)
        mean = {"quantity": "mean_regret", **common, "coverage_95": r["cover"].mean(),
                "bias_pt": r["err"].mean(), "mc_se_pt": r["err"].std() / np.sqrt(n)}  # fmt: skip
        worst = {"quantity": "worst_regret", **common, "coverage_at_least_95": r["wcover"].mean(),
                 "point_bias_pt": r["werr"].mean(),
                 "baseline_worst_pair_own_interval_coverage": r["wold"].mean()}  # fmt: skip
        for line in (mean, worst):
            print(json.dumps({k: _round(v) for k, v in {**line, "seconds": secs}.items()}))
    rng = np.random.default_rng(12)
    t0 = time.perf_counter()
    cover, err, in_sample = [], [], []
    for _ in range(n):
        rec, study, pairs, _ = regret_study(rng, 6, 0.0, 0.0, (0, 1, 2), 0.01, 2000, False, True)
        lo, hi = rec["mean_regret_interval"]
        cover.append(lo <= 0 <= hi)
        err.append(rec["mean_regret"])
        c = next(c for c in study.configs if c.label() == rec["label"])
        cells = [study.candidates(p) for p in pairs]
        in_sample.append(100 * np.mean([PairContrast("d", x[study.best(p)], x[c]).mean
                                        for p, x in zip(pairs, cells, strict=True)]))  # fmt: skip
    line = {"quantity": "mean_regret_near_tie", "pairs": 6, "seeds": 3, "seed_sd_pt": 1.0,
            "studies": n, "true_regret_pt": 0.0, "coverage_95": np.mean(cover),
            "bias_pt": np.mean(err), "baseline_in_sample_bias_pt": np.mean(in_sample),
            "seconds": time.perf_counter() - t0}  # fmt: skip
    print(json.dumps({k: _round(v) for k, v in line.items()}))


def rank_lines(n: int) -> None:
    """Null rejection rates at 0.05: Friedman, Nemenyi (any pair), the sign test (against its
    exact size), the Holm-adjusted effects table and KD-gain columns (any row)."""
    import gc

    from scipy import stats

    from kdjax.analysis.ranks import ranking
    from kdjax.analysis.recommend import kd_gain
    from kdjax.analysis.stats import holm

    gc.collect = lambda *a: 0  # statsmodels' Holm collects garbage on every call
    for n_pairs, k, step in [(5, 3, None), (8, 4, None), (12, 5, 0.5), (6, 3, 1.0)]:
        rng = np.random.default_rng(n_pairs * 10 + k)
        rej, fam = [], []
        for x in _null_tables(rng, n_pairs, k, n, step):
            r = ranking("t", _table(x))
            rej.append(r.friedman_p < 0.05)
            fam.append(bool((r.posthoc.to_numpy()[np.triu_indices(k, 1)] < 0.05).any()))
        line = {"quantity": "friedman_null", "pairs": n_pairs, "treatments": k,
                "rounded_to_pt": step, "tables": n, "rejection_rate_005": np.mean(rej),
                "nemenyi_any_pair_rate_005": np.mean(fam)}  # fmt: skip
        print(json.dumps({a: _round(v) for a, v in line.items()}))
    for n_pairs in (6, 10, 13):
        size = sum(stats.binom.pmf(w, n_pairs, 0.5) for w in range(n_pairs + 1)
                   if stats.binomtest(w, n_pairs).pvalue < 0.05)  # fmt: skip
        rng = np.random.default_rng(n_pairs)
        rej = [ranking("t", _table(x)).friedman_p < 0.05 for x in _null_tables(rng, n_pairs, 2, n)]
        line = {"quantity": "sign_test_null", "pairs": n_pairs, "tables": n,
                "rejection_rate_005": np.mean(rej), "exact_size": size}  # fmt: skip
        print(json.dumps({a: _round(v) for a, v in line.items()}))
    from test_analysis_regret import effects_table_null_rate

    line = {"quantity": "effects_table_holm_null", "pairs": 6, "seeds": 2, "studies": n,
            "family_wise_rate_005": effects_table_null_rate(n)}  # fmt: skip
    print(json.dumps({a: _round(v) for a, v in line.items()}))
    for lrs in ((), (1e-4,)):
        rng, fd, fb = np.random.default_rng(13), [], []
        for _ in range(n):
            study, pairs = _null_gain_study(rng, lrs=lrs)
            gains = kd_gain(study, pairs, n_boot=100)
            fd.append(any(q < 0.05 for q in holm([g.default_test.p for g in gains])))
            fb.append(any(q < 0.05 for q in holm([g.best_test.p for g in gains])))
        line = {"quantity": "kd_gain_holm_null", "pairs": 6, "seeds": 3, "seed_sd_pt": 1.0,
                "baseline_lrs": 1 + len(lrs), "studies": n,
                "default_family_wise_rate_005": np.mean(fd),
                "best_family_wise_rate_005": np.mean(fb)}  # fmt: skip
        print(json.dumps({a: _round(v) for a, v in line.items()}))


def _round(v):
    return round(float(v), 4) if isinstance(v, float | np.floating) else v


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--studies", type=int, default=400)
    p.add_argument("--boot", type=int, default=400, help="baseline bootstrap resamples")
    p.add_argument("--part", choices=["effects", "regret", "ranks", "all"], default="all")
    args = p.parse_args()
    if args.part in ("regret", "all"):
        regret_lines(args.studies)
    if args.part in ("ranks", "all"):
        rank_lines(args.studies)
    if args.part not in ("effects", "all"):
        return
    for n_pairs, seed_sd, spread, n_seeds, n_ex in DESIGNS:
        rng, rng_boot = np.random.default_rng(11), np.random.default_rng(12)
        t0 = time.perf_counter()
        cover, err, mde, level, base = [], [], [], "", []
        for _ in range(args.studies):
            contrasts: list = []
            seeds = tuple(range(n_seeds))
            test, want = _calibration_study(rng, n_pairs, seed_sd, spread, contrasts, seeds, n_ex)
            level = test.level
            if n_seeds > 1:
                lo, hi = three_level_bootstrap(contrasts, args.boot, rng_boot)
                base.append(lo <= want <= hi)
            cover.append(test.lo <= want <= test.hi)
            err.append(test.estimate - want)
            mde.append(test.mde)
        line = {
            "pairs": n_pairs,
            "seed_sd_pt": seed_sd * 100,
            "spread_pt": spread * 100,
            "seeds": n_seeds,
            "test_examples": n_ex,
            "level": level,
            "studies": args.studies,
            "coverage_95": round(float(np.mean(cover)), 4),
            "bias_pt": round(float(np.mean(err)) * 100, 4),
            "mean_mde_pt": round(float(np.mean(mde)) * 100, 3),
            "baseline_three_level_bootstrap_coverage_95": round(float(np.mean(base)), 4)
            if base
            else None,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
