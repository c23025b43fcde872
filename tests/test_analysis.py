"""The analysis layer on synthetic ledgers whose answers are known by construction.

Scores = base(pair) + additive effects per option + small seeded noise; on one pair mse is
catastrophic. Expected winners and regrets are recomputed here by brute force from the raw
table, independently of kdjax.analysis, and checked against the planted effects.
"""

import itertools
import json
import shutil
import sqlite3

import numpy as np
import pytest
import yaml

from kdjax.analysis import analyse, compare, find_gaps, load_study, write_report
from kdjax.analysis.configs import BASELINE, config_of
from kdjax.analysis.report import main as report_main
from kdjax.sweep.ledger import NAMES, Ledger

DATASETS = {"d1": "accuracy", "d2": "f1", "d3": "f1"}
STUDENTS = ("small", "big")
PAIRS = [(d, s) for d in DATASETS for s in STUDENTS]
CATASTROPHE = ("d2", "small")  # mse collapses here
AXES = {
    "teacher": ["hs", "ll"],
    "distance": ["ce", "kl", "mse"],
    "alpha": [0.5, 1.0],
    "tau_t": [1.0, 2.0],
}
CONFIGS = list(itertools.product(*AXES.values()))  # (teacher, distance, alpha, tau_t)
EFFECT = {"hs": 0.0, "ll": 0.010, "ce": 0.020, "kl": 0.010, "mse": 0.030, 0.5: 0.0, 1.0: 0.015}
TAU = {1.0: 0.0, 2.0: 0.0003}  # far below the noise
NOISE, SEEDS = 0.002, (0, 1)


def base(pair):
    return 0.60 + 0.05 * list(DATASETS).index(pair[0]) + 0.04 * STUDENTS.index(pair[1])


def true_score(pair, cfg):
    teacher, distance, alpha, tau_t = cfg
    s = base(pair) + EFFECT[teacher] + EFFECT[distance] + EFFECT[alpha] + TAU[tau_t]
    return s - 0.23 if (pair == CATASTROPHE and distance == "mse") else s


def make_table():
    """(pair, cfg, seed) -> (val, test); cfg None is the no-KD baseline."""
    rng = np.random.default_rng(1234)
    table = {}
    for pair, seed in itertools.product(PAIRS, SEEDS):
        for cfg in [None, *CONFIGS]:
            mean = base(pair) - 0.02 if cfg is None else true_score(pair, cfg)
            table[pair, cfg, seed] = (
                mean + rng.normal(0, NOISE),
                mean - 0.01 + rng.normal(0, NOISE),
            )
    return table


def result(metric, val, test, **extra):
    return {
        "metric": metric,
        "validation": {metric: val, "loss": 1 - val},
        "test": {metric: test, "loss": 1 - test},
        "versions": {"fake": "1"},
        **extra,
    }


def build_ledger(workdir, table, skip=(), status=None):
    """Rows through the real ledger schema; results via Ledger.mark_done / mark_failed.
    `skip(pair, cfg, seed)` leaves a run out; `status(...)` overrides 'done'."""
    ledger = Ledger(workdir / "ledger.sqlite")
    ledger.db.execute("PRAGMA synchronous=OFF")  # test speed only
    todo = []
    for d, metric in DATASETS.items():
        todo.append((f"t-{d}", {"kind": "teacher", "dataset": d, "seed": 0}, metric, None))
    for (pair, cfg, seed), vt in table.items():
        if skip and skip(pair, cfg, seed):
            continue
        row = {"dataset": pair[0], "student": pair[1], "seed": seed, "stage": None}
        if cfg is None:
            row |= {"kind": "baseline", "teacher_checkpoint": "hs", "alpha": 0.0}
        else:
            row |= {
                "kind": "distill",
                "teacher_checkpoint": cfg[0],
                "distance": cfg[1],
                "alpha": cfg[2],
                "tau_t": cfg[3],
                "tau_s": "same",
                "tau_squared": 0,
            }
        run_id = f"{pair[0]}-{pair[1]}-{cfg}-{seed}"
        todo.append((run_id, row, DATASETS[pair[0]], (pair, cfg, seed, vt)))
    with ledger.db:
        for run_id, row, _, _ in todo:
            cols = {"run_id": run_id, "status": "pending", "config_json": json.dumps(row), **row}
            assert set(cols) <= set(NAMES)
            ledger.db.execute(
                f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                list(cols.values()),
            )
    for run_id, row, metric, info in todo:
        st = status(row, info) if status else "done"
        if st == "failed":
            ledger.mark_failed(run_id, "FloatingPointError: loss became nan at step 3\ntrace")
        elif st == "done" and info is None:
            v = 0.9 + 0.01 * int(row["dataset"][1])
            ckpts = {
                "hs": {"epoch": 2, "validation": {metric: v}},
                "ll": {"epoch": 1, "validation": {metric: v - 0.01}},
            }
            ledger.mark_done(run_id, result(metric, v, v - 0.005, checkpoints=ckpts))
        elif st == "done":
            cfg, (val, test) = info[1], info[3]
            diag = {
                "ece": 0.05,
                "kl_t1": 0.1 * (cfg[3] if cfg else 4.0),
                "agreement_dist": 0.9 if cfg and cfg[1] != "mse" else 0.8,
            }
            ledger.mark_done(run_id, result(metric, val, test, diagnostics=diag))
    ledger.close()
    return workdir


def brute_force(table, pairs=PAIRS):
    """Means over seeds, validation-chosen bests, option regrets and the single best."""
    mean = {}
    for (pair, cfg, _), (v, t) in table.items():
        mean.setdefault((pair, cfg), []).append((v, t))
    mean = {k: tuple(np.mean(x, axis=0)) for k, x in mean.items()}
    best = {p: max(CONFIGS, key=lambda c: mean[p, c][0]) for p in pairs if (p, CONFIGS[0]) in mean}
    regret = {}
    for i, (axis, options) in enumerate(AXES.items()):
        for o in options:
            for p, b in best.items():
                sub = [c for c in CONFIGS if c[i] == o and (p, c) in mean]
                c = max(sub, key=lambda c: mean[p, c][0])
                regret[axis, o, p] = mean[p, b][1] - mean[p, c][1]
    norm = {c: np.mean([mean[p, c][0] / mean[p, best[p]][0] for p in best]) for c in CONFIGS}
    single = max(CONFIGS, key=lambda c: norm[c])
    single_regret = {p: mean[p, best[p]][1] - mean[p, single][1] for p in best}
    return mean, best, regret, single, single_regret


def as_tuple(config):
    return (config["teacher_checkpoint"], config["distance"], config["alpha"], config["tau_t"])


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    table = make_table()
    workdir = build_ledger(tmp_path_factory.mktemp("full"), table)
    study = load_study(workdir, axes=AXES)
    return table, workdir, analyse(study)


def test_pair_winners_and_kd_gain(full):
    table, _, e = full
    mean, best, *_ = brute_force(table)
    for pair in PAIRS:
        r = e.pairs[pair]
        assert as_tuple(r.best) == best[pair]
        planted = ("ll", "ce" if pair == CATASTROPHE else "mse", 1.0)
        assert best[pair][:3] == planted
        assert r.gain == pytest.approx(mean[pair, best[pair]][1] - mean[pair, None][1], abs=1e-12)
        assert r.best_minus_default == pytest.approx(
            mean[pair, best[pair]][1] - mean[pair, ("hs", "ce", 0.5, 1.0)][1], abs=1e-12
        )
        assert r.teacher.test == pytest.approx(0.9 + 0.01 * int(pair[0][1]) - 0.005)


def test_option_regrets_match_brute_force_and_construction(full):
    table, _, e = full
    _, _, regret, *_ = brute_force(table)
    # Noise-free expectations from the planted effects: (mean, worst) regret.
    planted = {
        ("distance", "mse"): ((0.23 - 0.01) / 6, 0.22),
        ("distance", "kl"): ((5 * 0.02 + 0.01) / 6, 0.02),
        ("distance", "ce"): (5 * 0.01 / 6, 0.01),
        ("alpha", 0.5): (0.015, 0.015),
        ("teacher", "hs"): (0.01, 0.01),
        ("teacher", "ll"): (0.0, 0.0),
    }
    for axis, options in AXES.items():
        eff = e.axes["teacher_checkpoint" if axis == "teacher" else axis]
        for o in options:
            got = eff.option(o)
            want = {p: regret[axis, o, p] for p in PAIRS}
            assert got.n_pairs == len(PAIRS) and not got.missing
            assert got.mean_regret == pytest.approx(np.mean(list(want.values())), abs=1e-12)
            assert got.worst_regret == pytest.approx(max(want.values()), abs=1e-12)
            assert got.worst_pair == max(want, key=want.get)
            if (axis, o) in planted:
                m, w = planted[axis, o]
                assert got.mean_regret == pytest.approx(m, abs=0.006)
                assert got.worst_regret == pytest.approx(w, abs=0.006)
    assert e.axes["distance"].option("mse").worst_pair == CATASTROPHE
    assert e.axes["distance"].best_option == "ce"
    assert e.axes["alpha"].best_option == 1.0


def test_single_best_configuration(full):
    table, _, e = full
    *_, single, single_regret = brute_force(table)
    best = e.best_single
    assert e.ranking_complete and len(e.ranking) == len(CONFIGS)
    assert as_tuple(best.config) == single
    assert single[:3] == ("ll", "ce", 1.0)  # mse's catastrophe costs more than ce's 1 point
    assert best.mean_regret == pytest.approx(np.mean(list(single_regret.values())), abs=1e-12)
    assert best.worst_regret == pytest.approx(max(single_regret.values()), abs=1e-12)
    assert best.worst_pair == max(single_regret, key=single_regret.get)


def test_noise_vs_real_differences(full):
    _, _, e = full
    tau = e.axes["tau_t"].comparisons
    assert len(tau) == 1 and tau[0].within_noise is True
    assert "within noise" in tau[0].verdict
    alpha = e.axes["alpha"].comparisons[0]
    assert alpha.within_noise is False and alpha.diff == pytest.approx(0.015, abs=0.003)
    ce_kl = compare(e, "distance", "ce", "kl")
    assert ce_kl.within_noise is False and ce_kl.lo > 0
    assert ce_kl.n_units == len(PAIRS) * len(SEEDS)
    assert compare(e, "tau_t", 2.0, 1.0).within_noise is True


def test_diagnostics_and_seed_spread(full):
    _, _, e = full
    by_distance = e.diagnostics["distance"]
    assert by_distance["mse"]["agreement_dist"][0] == pytest.approx(0.8)
    assert by_distance["ce"]["agreement_dist"] == (pytest.approx(0.9), len(PAIRS))
    assert e.diagnostics["tau_t"][2.0]["kl_t1"][0] == pytest.approx(0.2)
    assert e.diagnostics["tau_t"]["no KD"]["kl_t1"][0] == pytest.approx(0.4)
    assert e.axes["alpha"].option(0.5).regret_std is not None  # 2 seeds: spread shown
    assert find_gaps(e).complete


def test_tau_s_same_is_resolved_but_kept():
    row = {"teacher_checkpoint": "hs", "distance": "ce", "alpha": 0.5, "tau_t": 2.0}
    same, two, one = (config_of({**row, "tau_s": v}) for v in ("same", 2.0, 1.0))
    assert same == two and same != one
    assert same.given_value("tau_s") == "same" and same["tau_s"] == 2.0
    assert same.has("tau_s", "same") and not one.has("tau_s", "same") and one.has("tau_s", 1)
    assert "tau_s=same" in same.label() and BASELINE.label() == "no KD"


def test_manifest_axes_alpha_zero_option_and_greedy_note(full, tmp_path):
    _, workdir, e = full
    shutil.copy(workdir / "ledger.sqlite", tmp_path / "ledger.sqlite")
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    with db:
        db.execute("UPDATE runs SET stage='1:distance' WHERE kind='distill'")
    db.close()
    axes = {**AXES, "alpha": [0.0, 0.5, 1.0], "tau_s": ["same"]}
    manifest = {"name": "m", "axes": axes, "tau_squared": False}
    (tmp_path / "manifest.resolved.yaml").write_text(yaml.safe_dump(manifest))
    study = load_study(tmp_path)
    assert study.axes["teacher_checkpoint"] == ["hs", "ll"]
    assert study.axes["alpha"] == [0.0, 0.5, 1.0] and study.swept[-1] == "tau_t"
    e0 = analyse(study, default={"distance": "ce", "alpha": 0.5}, n_boot=200)
    no_kd = e0.axes["alpha"].option(0.0)  # alpha 0 listed: the baseline is that option
    for p in PAIRS:
        assert no_kd.regret[p] == pytest.approx(e.pairs[p].gain, abs=1e-12)
        assert as_tuple(e0.pairs[p].best) == as_tuple(e.pairs[p].best)
    assert len(e0.ranking) == len(CONFIGS) + 1
    assert any(n.startswith("Greedy search") for n in find_gaps(e0).notes)


def test_partial_ledger_reports_what_is_missing(tmp_path):
    table = make_table()
    skipped = ("d3", "big")

    def skip(pair, cfg, seed):  # greedy never tried mse on one pair
        return pair == skipped and cfg is not None and cfg[1] == "mse"

    def status(row, info):
        if row["kind"] == "teacher":
            return "failed" if row["dataset"] == "d2" else "done"
        pair, cfg, seed = info[:3]
        if pair == ("d1", "big") and cfg is None:
            return "failed"
        if pair == ("d1", "small") and cfg == ("hs", "kl", 0.5, 2.0):
            return "pending"
        return "failed" if (pair == ("d2", "big") and cfg == ("hs", "ce", 0.5, 1.0)) else "done"

    workdir = build_ledger(tmp_path, table, skip, status)
    e = analyse(load_study(workdir, axes=AXES))
    g = find_gaps(e)
    assert not g.complete
    assert g.count("failed") == 1 + 2 + 2 and g.count("pending") == 2
    assert g.no_teacher == [("d2", "failed")]
    assert g.no_baseline == [(("d1", "big"), "failed")]
    assert e.axes["distance"].option("mse").missing == [skipped]
    notes = "\n".join(g.notes)
    assert "distance: regret of mse is computed on 5 of 6 pairs (not run on d3/big)" in notes
    assert "KD gain over no KD is computed on 5 of 6 pairs" in notes
    assert "Teacher score missing for: d2 (failed)" in notes
    assert e.ranking_complete and len(e.ranking) == len(CONFIGS) - 8 - 2
    out = write_report(workdir, n_boot=200)
    md = (out / "report.md").read_text()
    assert "This ledger is incomplete" in md and "regret of mse is computed on 5 of 6" in md
    assert "Failed runs (5)" in md and "loss became nan at step 3" in md
    assert "| d1/small | distill | 2 | 0 |" in md  # the unfinished runs, by pair


def test_write_report_files(full):
    _, workdir, _ = full
    out = write_report(workdir, n_boot=200)
    md = (out / "report.md").read_text()
    for section in (
        "Best single configuration",
        "Effect of each parameter",
        "KD gain",
        "One configuration for every pair",
        "Diagnostics",
        "Gaps and caveats",
    ):
        assert section in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5 and "http" not in html.split("<body>")[1]
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 5
    import matplotlib.image

    for png in pngs:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024
        assert matplotlib.image.imread(png).shape[0] > 100
    lines = (out / "runs.csv").read_text().splitlines()
    assert len(lines) == 1 + len(DATASETS) + len(PAIRS) * len(SEEDS) * (len(CONFIGS) + 1)
    import pyarrow.parquet as pq

    t = pq.read_table(out / "runs.parquet")
    assert t.num_rows == len(lines) - 1 and set(t.column("tau_s").to_pylist()) == {None, "same"}
    assert (out / "configs.csv").is_file()


def test_cli_and_empty_ledger(tmp_path, capsys):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.close()
    assert report_main([str(tmp_path), "--bootstrap", "50"]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "nothing to compare" in md
    assert report_main([str(tmp_path / "nowhere")]) == 2
    assert "no ledger" in capsys.readouterr().err
