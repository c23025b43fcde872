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

    python benchmarks/analysis_calibration.py [--studies 400]

Prints one JSON line per design.
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--studies", type=int, default=400)
    p.add_argument("--boot", type=int, default=400, help="baseline bootstrap resamples")
    args = p.parse_args()
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
