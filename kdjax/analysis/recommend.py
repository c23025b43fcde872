"""One configuration for every pair, with evidence; and the KD gain, fairly.

The single configuration is chosen on validation among the configurations run on EVERY active
pair (under greedy, the transfer stage makes these), by the smallest mean validation regret
(pair's best validation score minus the configuration's). Its regret on test against each
pair's own validation-chosen best is reported with intervals (cross-fitted over seeds: see
crossfit.py), and again leave-one-dataset-out: chosen without dataset d, scored on d. The
reference study's recommendation (ll, ce, tau_s 1 at the study's best tau_t) is compared with
it when it was run everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kdjax.analysis.configs import Config, Pair
from kdjax.analysis.crossfit import compose, held_out_best, held_out_choice, least_val_regret
from kdjax.analysis.effects import AxisEffect, config_dict
from kdjax.analysis.load import Cell, Study
from kdjax.analysis.stats import (
    PTS,
    PairContrast,
    Test,
    compare_cells,
    interval_of_max,
    within_pairs,
)

REFERENCE = {"teacher_checkpoint": "ll", "distance": "ce", "tau_s": 1.0}


def universal(study: Study, pairs: list[Pair]) -> list[Config]:
    """Configurations run (finished) on every pair in `pairs`, in ledger order."""
    if not pairs:
        return []
    return [c for c in study.configs if all(c in study.candidates(p) for p in pairs)]


def choose(study: Study, pairs: list[Pair], among: list[Config]) -> Config | None:
    """The configuration in `among` with the smallest mean validation regret on `pairs` (the
    pair's best validation score minus the configuration's)."""
    if not among or not pairs:
        return None
    cells = {p: study.candidates(p) for p in pairs}
    return least_val_regret(cells, among, lambda x: x.val_mean)  # ties: ledger order


def regrets(
    study: Study, c: Config, pairs: list[Pair], held_out: dict[int, Config] | None = None
) -> dict[Pair, PairContrast]:
    """Per pair: the pair's validation-best configuration minus `c`, on test, by seed. With two
    or more seeds the best is cross-fitted (crossfit.held_out_best), and so is `c` when
    `held_out` gives, per seed, the configuration chosen without it (crossfit.held_out_choice;
    `c` itself on a seed it lacks)."""
    out = {}
    for p in pairs:
        cells = study.candidates(p)
        mine = cells[c]
        if held_out:
            mine = compose(cells, {s: held_out.get(s, c) for s in cells[c].test})
        out[p] = PairContrast(p[0], held_out_best(cells), mine)
    return out


def _interval(t: Test) -> list[float | None]:
    if t.lo is None:
        return [None, None]
    return [t.lo * PTS, t.hi * PTS]


def _kind(t: Test) -> str:
    return {
        "pairs": "95% CI, Student-t over pairs",
        "seeds": "95% CI, these pairs only (Student-t over seeds, seed variance pooled over "
        "pairs; seed and test-example noise)",
        "examples": "95% CI, these pairs only (paired bootstrap over test examples; one seed: "
        "seed noise not included)",
        "identical": "exact (identical runs)",
    }.get(t.level, t.reason or "no interval")


def _method(best: Config, held_out: dict[int, Config]) -> str:
    if not held_out:
        return "one seed: the pair's best is chosen on the same runs' validation, not cross-fitted"
    n = len(held_out)
    text = (
        "cross-fitted over seeds: for each seed, the pair's best and the recommendation are "
        f"chosen on the other {n - 1} seed(s)' validation and scored on this seed's test, so "
        f"the pair's best is tuned on {n - 1} of {n} seeds; a negative regret means the "
        "recommendation beat the pair's best chosen that way"
    )
    other = sorted({c.label() for c in held_out.values() if c != best})
    if other:
        text += f"; held out, the recommendation was sometimes {', '.join(other)}"
    return text


def _worst_kind(per_pair: list[Test], ci: tuple[float, float] | None) -> str:
    """What the worst-regret interval claims: the largest TRUE per-pair regret, not the pair
    whose estimate came out largest (that estimate is biased upward)."""
    if ci is None:
        return "no interval: " + next(
            (_kind(t) for t in per_pair if t.lo is None and t.level != "identical"), "no claim"
        )
    levels = [t for t in per_pair if t.level != "identical"]
    scope = _kind(levels[0]).removeprefix("95% CI, ") if levels else "exact (identical runs)"
    return (
        f"95% interval for the largest true per-pair regret, at least 95% (Bonferroni over "
        f"{len(per_pair)} pairs; {scope}); the point value is the largest per-pair estimate, "
        "biased upward"
    )


def _tau_t_best(study: Study, axes: dict[str, AxisEffect], among: list[Config]) -> Any:
    if "tau_t" in axes and axes["tau_t"].best is not None:
        return axes["tau_t"].best
    taus = [c["tau_t"] for c in among]
    return taus[0] if taus else None


def recommend(
    study: Study,
    pairs: list[Pair],
    axes: dict[str, AxisEffect],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The recommendation.json content (regrets in points; positive = worse than the pair's
    own best)."""
    among = universal(study, pairs)
    best = choose(study, pairs, among)
    out: dict[str, Any] = {
        "config": None,
        "chosen_on": "validation",
        "reported_on": "test",
        "units": "points",
        "n_pairs": len(pairs),
        "n_candidates": len(among),
    }
    if best is None:
        out["reason"] = (
            "no configuration finished on every pair (under greedy, the transfer stage runs "
            "candidate configurations on every pair)"
        )
        return out
    held_out = held_out_choice(study, pairs, among)
    reg = regrets(study, best, pairs, held_out)
    mean_t = compare_cells(list(reg.values()), n_boot, seed)
    worst = max(reg, key=lambda p: reg[p].mean)
    # One pair's test each, the seed variance pooled over every pair's regret.
    per_pair = [within_pairs([c], n_boot, seed, list(reg.values())) for c in reg.values()]
    worst_ci = interval_of_max(per_pair)
    out |= {
        "config": config_dict(best),
        "label": best.label(),
        "mean_regret": float(np.mean([c.mean for c in reg.values()])) * PTS,
        "mean_regret_interval": _interval(mean_t),
        "mean_regret_interval_kind": _kind(mean_t),
        "worst_regret": reg[worst].mean * PTS,
        "worst_pair": f"{worst[0]}/{worst[1]}",
        "worst_regret_interval": [None, None]
        if worst_ci is None
        else [worst_ci[0] * PTS, worst_ci[1] * PTS],
        "worst_regret_interval_kind": _worst_kind(per_pair, worst_ci),
        "per_pair_regret": {f"{p[0]}/{p[1]}": c.mean * PTS for p, c in reg.items()},
        "regret_method": _method(best, held_out),
        "leave_one_dataset_out": leave_one_dataset_out(study, pairs, among),
        "reference": reference(study, pairs, among, best, axes, n_boot, seed),
    }
    return out


def leave_one_dataset_out(
    study: Study, pairs: list[Pair], among: list[Config]
) -> list[dict[str, Any]]:
    """Per dataset d: the configuration chosen on validation without d, its test regret on d."""
    out = []
    datasets = list(dict.fromkeys(p[0] for p in pairs))
    if len(datasets) < 2:
        return out
    for d in datasets:
        rest = [p for p in pairs if p[0] != d]
        c = choose(study, rest, among)
        on_d = regrets(study, c, [p for p in pairs if p[0] == d])
        out.append(
            {
                "dataset": d,
                "config": config_dict(c),
                "regret": float(np.mean([x.mean for x in on_d.values()])) * PTS,
            }
        )
    return out


def reference(
    study: Study,
    pairs: list[Pair],
    among: list[Config],
    best: Config,
    axes: dict[str, AxisEffect],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The reference study's recommendation at this study's best tau_t, against ours."""
    tau_t = _tau_t_best(study, axes, among)
    want = {**REFERENCE, "tau_t": tau_t}
    out: dict[str, Any] = {
        "config": {"teacher": "ll", "distance": "ce", "tau_t": tau_t, "tau_s": 1.0},
        "source": "Sultan et al. 2024 (arXiv 2401.06356): ll teacher, ce, tau_s 1",
    }
    matches = [c for c in among if all(c.has(a, v) for a, v in want.items() if v is not None)]
    if not matches:
        out["run_everywhere"] = False
        out["reason"] = "not run on every pair: no regret can be compared"
        return out
    ref = choose(study, pairs, matches)  # the alpha (and the rest) chosen on validation
    reg = regrets(study, ref, pairs, held_out_choice(study, pairs, matches))
    cells = {p: study.candidates(p) for p in pairs}
    diff = {p: PairContrast(p[0], cells[p][best], cells[p][ref]) for p in pairs}
    t = compare_cells(list(diff.values()), n_boot, seed)
    out |= {
        "run_everywhere": True,
        "config": config_dict(ref),
        "mean_regret": float(np.mean([c.mean for c in reg.values()])) * PTS,
        "worst_regret": max(c.mean for c in reg.values()) * PTS,
        "difference": t.estimate * PTS,
        "difference_interval": _interval(t),
        "difference_meaning": "recommended minus reference, test points (positive: ours better)",
        "verdict": t.verdict(),
    }
    return out


@dataclass
class Gain:
    """KD against no KD on one pair: the default KD configuration against the untuned
    baseline, and the pair's validation-best KD against the validation-best baseline."""

    pair: Pair
    default: PairContrast | None
    default_test: Test | None
    best: PairContrast | None
    best_test: Test | None
    baseline_lr: float | None  # the tuned baseline's learning rate


def _best_baseline(study: Study, pair: Pair) -> tuple[Cell | None, float | None]:
    by_lr = study.baselines.get(pair, {})
    if not by_lr:
        return study.baseline(pair), None
    lr = max(by_lr, key=lambda k: by_lr[k].val_mean)
    return by_lr[lr], lr


def kd_gain(study: Study, pairs: list[Pair], n_boot: int = 1000, seed: int = 0) -> list[Gain]:
    """Per pair, paired tests of KD against no KD (seed variance pooled over the pairs of each
    column; one seed: test-example noise)."""
    rows = []
    default = dict(study.default)
    for p in pairs:
        cells = {c: x for c, x in study.cells.get(p, {}).items() if not c.is_baseline}
        base = study.baseline(p)
        dflt = next((c for c in cells if all(c.has(a, v) for a, v in default.items())), None)
        d = PairContrast(p[0], cells[dflt], base) if dflt and base else None
        kd_best = max(cells, key=lambda c: cells[c].val_mean) if cells else None
        tuned, lr = _best_baseline(study, p)
        b = PairContrast(p[0], cells[kd_best], tuned) if kd_best and tuned else None
        rows.append((p, d if d and d.seeds else None, b if b and b.seeds else None, lr))
    pool_d = [d for _, d, _, _ in rows if d is not None]  # each column pools its pairs
    pool_b = [b for _, _, b, _ in rows if b is not None]
    return [
        Gain(
            p,
            d,
            within_pairs([d], n_boot, seed, pool_d) if d else None,
            b,
            within_pairs([b], n_boot, seed, pool_b) if b else None,
            lr,
        )
        for p, d, b, lr in rows
    ]
