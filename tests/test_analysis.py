"""The analysis layer on synthetic ledgers whose answers are known by construction.

Scores = base(pair) + additive effects per option + small seeded noise; on one pair mse is
catastrophic. Expected effects, winners and the single configuration are recomputed here by
brute force from the raw table, independently of kdjax.analysis, and checked against the
planted effects. (No per-example outcomes here: tests/test_analysis_effects.py has those.)
"""

import itertools
import json
import shutil
import sqlite3

import numpy as np
import pytest
import yaml

from kdjax.analysis import analyse, find_gaps, load_study, write_report
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
    """Means over seeds; per axis the validation-best option (groups centred, averaged over the
    settings of the other knobs, then pairs) and each option's test effect (points) averaged
    the same way; the single configuration with the smallest mean validation regret."""
    mean = {}
    for (pair, cfg, _), (v, t) in table.items():
        mean.setdefault((pair, cfg), []).append((v, t))
    mean = {k: tuple(np.mean(x, axis=0)) for k, x in mean.items()}
    best_axis, effect = {}, {}
    for i, (axis, options) in enumerate(AXES.items()):
        others = [c for c in CONFIGS if c[i] == options[0]]
        val, test = {o: [] for o in options}, {o: [] for o in options}
        for p in pairs:
            pv, pt = {o: [] for o in options}, {o: [] for o in options}
            for c in others:
                group = {o: c[:i] + (o,) + c[i + 1 :] for o in options}
                centre = np.mean([mean[p, g][0] for g in group.values()])
                for o, g in group.items():
                    pv[o].append(mean[p, g][0] - centre)
                    pt[o].append(mean[p, g][1])
            for o in options:
                val[o].append(np.mean(pv[o]))
                test[o].append(pt[o])
        b = max(options, key=lambda o: np.mean(val[o]))
        best_axis[axis] = b
        for o in options:
            per_pair = [np.mean(np.subtract(x, y)) for x, y in zip(test[o], test[b], strict=True)]
            effect[axis, o] = 100 * np.mean(per_pair)
    best = {p: max(CONFIGS, key=lambda c: mean[p, c][0]) for p in pairs}
    vreg = {c: np.mean([mean[p, best[p]][0] - mean[p, c][0] for p in pairs]) for c in CONFIGS}
    single = min(CONFIGS, key=lambda c: vreg[c])
    single_regret = {p: 100 * (mean[p, best[p]][1] - mean[p, single][1]) for p in pairs}
    seeds = sorted({s for _, _, s in table})
    if len(seeds) > 1:  # cross-fitted: for seed s, both choices made on the other seeds
        by_seed = {p: [] for p in pairs}
        for s in seeds:
            vm = {
                (p, c): np.mean([table[p, c, t][0] for t in seeds if t != s])
                for p in pairs
                for c in CONFIGS
            }
            b = {p: max(CONFIGS, key=lambda c, p=p: vm[p, c]) for p in pairs}
            one = min(CONFIGS, key=lambda c: np.mean([vm[p, b[p]] - vm[p, c] for p in pairs]))
            for p in pairs:
                by_seed[p].append(table[p, b[p], s][1] - table[p, one, s][1])
        single_regret = {p: 100 * np.mean(x) for p, x in by_seed.items()}
    return mean, best, best_axis, effect, single, single_regret


def as_tuple(config):
    return (config["teacher"], config["distance"], config["alpha"], config["tau_t"])


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    table = make_table()
    workdir = build_ledger(tmp_path_factory.mktemp("full"), table)
    study = load_study(workdir, axes=AXES)
    return table, workdir, analyse(study)


def test_effects_match_brute_force_and_construction(full):
    table, _, r = full
    _, _, best_axis, effect, *_ = brute_force(table)
    # Planted contrasts to the best option (points); mse: +1 on five pairs, -22 on one.
    planted = {
        ("teacher", "hs"): -1.0, ("distance", "kl"): -1.0, ("distance", "mse"): -17 / 6,
        ("alpha", 0.5): -1.5, ("tau_t", 1.0): -0.03,
    }  # fmt: skip
    assert best_axis == {"teacher": "ll", "distance": "ce", "alpha": 1.0, "tau_t": 2.0}
    for axis, options in AXES.items():
        eff = r.axes["teacher_checkpoint" if axis == "teacher" else axis]
        assert eff.best == best_axis[axis]
        for o in options:
            got = eff.option(o)
            assert got.n_pairs == len(PAIRS)
            assert got.effect == pytest.approx(effect[axis, o], abs=1e-9)
            if (axis, o) in planted:
                assert got.effect == pytest.approx(planted[axis, o], abs=0.15)
    mse = r.axes["distance"].option("mse")
    assert mse.per_pair()[CATASTROPHE] == pytest.approx(-22.0, abs=0.3)
    assert "no detectable difference (MDE" in r.axes["tau_t"].option(1.0).verdict
    assert r.axes["alpha"].option(0.5).verdict.startswith("worse by 1.5 pt (p")
    # The catastrophe makes mse's pair contrasts spread widely: not detectable from 6 pairs.
    assert mse.test.level == "pairs" and mse.p_adjusted > 0.05


def test_single_best_configuration(full):
    table, _, r = full
    *_, single, single_regret = brute_force(table)
    rec = r.recommendation
    assert rec["n_candidates"] == len(CONFIGS) and rec["n_pairs"] == len(PAIRS)
    assert as_tuple(rec["config"]) == single
    assert single[:3] == ("ll", "ce", 1.0)  # mse's catastrophe costs more than ce's 1 point
    assert rec["mean_regret"] == pytest.approx(np.mean(list(single_regret.values())), abs=1e-9)
    assert rec["worst_regret"] == pytest.approx(max(single_regret.values()), abs=1e-9)
    lo, hi = rec["mean_regret_interval"]
    assert lo <= rec["mean_regret"] <= hi and "Student-t" in rec["mean_regret_interval_kind"]
    assert [x["dataset"] for x in rec["leave_one_dataset_out"]] == list(DATASETS)
    assert rec["reference"]["run_everywhere"] is False  # no tau_s 1 in this grid


def test_kd_gain_per_pair(full):
    table, _, r = full
    mean = brute_force(table)[0]
    for g in r.gains:
        dflt = ("hs", "ce", 0.5, 1.0)
        want = mean[g.pair, dflt][1] - mean[g.pair, None][1]
        assert g.default.mean == pytest.approx(want, abs=1e-12)
        assert g.default_test.level == "seeds"  # no per-example outcomes: seed noise only


def test_diagnostics(full):
    _, _, r = full
    by_distance = r.diagnostics["distance"]
    assert by_distance["mse"]["agreement_dist"][0] == pytest.approx(0.8)
    assert by_distance["ce"]["agreement_dist"] == (pytest.approx(0.9), len(PAIRS))
    assert r.diagnostics["tau_t"][2.0]["kl_t1"][0] == pytest.approx(0.2)
    assert r.diagnostics["tau_t"]["no KD"]["kl_t1"][0] == pytest.approx(0.4)
    assert find_gaps(r).complete


def test_tau_s_same_is_resolved_but_kept():
    row = {"teacher_checkpoint": "hs", "distance": "ce", "alpha": 0.5, "tau_t": 2.0}
    same, two, one = (config_of({**row, "tau_s": v}) for v in ("same", 2.0, 1.0))
    assert same == two and same != one
    assert same.given_value("tau_s") == "same" and same["tau_s"] == 2.0
    assert same.has("tau_s", "same") and not one.has("tau_s", "same") and one.has("tau_s", 1)
    assert "tau_s=same" in same.label() and BASELINE.label() == "no KD"


def test_manifest_axes_alpha_zero_option_and_greedy_note(full, tmp_path):
    table, workdir, _ = full
    shutil.copy(workdir / "ledger.sqlite", tmp_path / "ledger.sqlite")
    db = sqlite3.connect(tmp_path / "ledger.sqlite")
    with db:
        db.execute("UPDATE runs SET stage='1:distance' WHERE kind='distill'")
    db.close()
    axes = {**AXES, "alpha": [0.0, 0.5, 1.0], "tau_s": ["same"]}
    manifest = {"name": "m", "axes": axes, "tau_squared": False}
    (tmp_path / "manifest.resolved.yaml").write_text(yaml.safe_dump(manifest))
    study = load_study(tmp_path)
    assert study.strategy == "greedy"  # from the stage labels
    assert study.axes["teacher_checkpoint"] == ["hs", "ll"]
    assert study.axes["alpha"] == [0.0, 0.5, 1.0] and study.swept[-1] == "tau_t"
    r = analyse(study)
    mean, best = brute_force(table)[:2]
    no_kd = r.axes["alpha"].option(0.0)  # alpha 0 listed: the baseline is that option
    assert r.axes["alpha"].best == 1.0 and no_kd.n_pairs == len(PAIRS)
    for p in PAIRS:  # around each pair's best: no KD minus it
        want = 100 * (mean[p, None][1] - mean[p, best[p]][1])
        assert no_kd.per_pair()[p] == pytest.approx(want, abs=1e-9)
    assert r.recommendation["n_candidates"] == len(CONFIGS) + 1
    assert any(n.startswith("Greedy search without a sensitivity") for n in find_gaps(r).notes)


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
    r = analyse(load_study(workdir, axes=AXES))
    g = find_gaps(r)
    assert not g.complete
    assert g.count("failed") == 1 + 2 + 2 and g.count("pending") == 2
    assert g.no_teacher == [("d2", "failed")]
    assert g.no_baseline == [(("d1", "big"), "failed")]
    mse = r.axes["distance"].option("mse")
    assert mse.n_pairs == 5 and skipped not in mse.contrasts
    assert skipped in r.axes["distance"].option("kl").contrasts  # from its partial group
    notes = "\n".join(g.notes)
    assert "distance: the effect of mse uses 5 of 6 pairs" in notes
    assert "No finished no-KD baseline for 1 pair(s): d1/big (failed)" in notes
    assert "Teacher score missing for: d2 (failed)" in notes
    assert r.recommendation["n_candidates"] == len(CONFIGS) - 8 - 2
    out = write_report(workdir, n_boot=200)
    md = (out / "report.md").read_text()
    assert "This ledger is incomplete" in md and "the effect of mse uses 5 of 6" in md
    assert "Failed runs (5)" in md and "loss became nan at step 3" in md
    assert "| d1/small | distill | 2 | 0 |" in md  # the unfinished runs, by pair


def test_write_report_files(full):
    _, workdir, r = full
    out = write_report(workdir, n_boot=200)
    md = (out / "report.md").read_text()
    for section in (
        "One configuration for every pair",
        "Effect of each parameter",
        "KD gain",
        "Ranks across pairs",
        "Friedman test over 6 pairs",
        "Breakdowns",
        "Diagnostics",
        "Gaps and caveats",
    ):
        assert section in md
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html
    assert html.count("data:image/png;base64,") >= 5 and "http" not in html.split("<body>")[1]
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "cd_diagram_1.png", "cd_diagram_4.png", "diagnostics.png", "effects_forest.png",
        "kd_gain.png", "regret_single_configs.png",
    ]  # fmt: skip
    import matplotlib.image

    for png in pngs:
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1024
        assert matplotlib.image.imread(out / png).shape[0] > 100
    import pandas as pd

    df = pd.read_csv(out / "effects.csv")
    assert list(df.columns) == [
        "axis", "option", "effect", "ci_low", "ci_high", "p_value", "verdict", "n_pairs"
    ]  # fmt: skip
    assert len(df) == sum(len(v) for v in AXES.values())
    assert json.loads((out / "recommendation.json").read_text()) == json.loads(
        json.dumps(r.recommendation)
    )
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
