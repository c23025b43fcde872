"""Coverage and bias of the analysis's 95% intervals over simulated studies with planted answers.

Each study: two distances (ce, mse) on P pairs, 2 seeds, 300 test examples per dataset with
0/1 outcomes; mse's true effect is -1 point plus a per-pair spread; seed noise moves
validation and test together. The truth is the mean effect of pairs like these (P >= 5) or of
these pairs (P < 5, where the report's intervals carry test-example noise only). Runs the
same simulator as tests/test_analysis_effects.py (tests/analysis_helpers.py).

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

DESIGNS = [  # (pairs, seed noise sd, per-pair spread of the effect), as fractions
    (6, 0.004, 0.004),
    (5, 0.004, 0.0),
    (12, 0.004, 0.0),
    (12, 0.002, 0.01),
    (4, 0.003, 0.0),
    (3, 0.0, 0.004),
    (1, 0.0, 0.0),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--studies", type=int, default=400)
    args = p.parse_args()
    for n_pairs, seed_sd, spread in DESIGNS:
        rng = np.random.default_rng(11)
        t0 = time.perf_counter()
        cover, err, mde, level = [], [], [], ""
        for _ in range(args.studies):
            test, want = _calibration_study(rng, n_pairs, seed_sd, spread)
            level = test.level
            cover.append(test.lo <= want <= test.hi)
            err.append(test.estimate - want)
            mde.append(test.mde)
        line = {
            "pairs": n_pairs,
            "seed_sd_pt": seed_sd * 100,
            "spread_pt": spread * 100,
            "level": level,
            "studies": args.studies,
            "coverage_95": round(float(np.mean(cover)), 4),
            "bias_pt": round(float(np.mean(err)) * 100, 4),
            "mean_mde_pt": round(float(np.mean(mde)) * 100, 3),
            "seconds": round(time.perf_counter() - t0, 2),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
