"""Fair effects and the recommendation on planted studies (pure numpy, no training)."""

import json

import numpy as np
import pytest
from analysis_helpers import Simulator, additive

from kdjax.analysis import effects_frame, recommendation
from kdjax.analysis.effects import COLUMNS
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


def greedy_study(rng=0, n_examples=4000, seeds=(0, 1, 2)):
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
