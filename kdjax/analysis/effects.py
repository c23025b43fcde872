"""The study's analysis definitions: every choice is made on validation, every number is test.

- pair best: the configuration with the highest mean validation score over seeds;
- option score: among a pair's configurations having that option, the validation-best one's
  test score (the other axes at their best); regret = pair best test - option score;
- single best configuration: among those run on every pair, the highest mean normalised
  validation score (score / the pair's best validation score);
- KD gain: pair best test - no-KD baseline test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdjax.analysis.breakdowns import diagnostics_by, score_grid
from kdjax.analysis.configs import Config, Pair
from kdjax.analysis.load import Cell, Study, Teacher
from kdjax.analysis.stats import Comparison, compare_units, seed_spread


def _paired(a: Cell, b: Cell) -> dict[int, float]:
    return {s: a.test[s] - b.test[s] for s in a.test if s in b.test}


def _worst(regret: dict[Pair, float]) -> tuple[float | None, Pair | None]:
    if not regret:
        return None, None
    pair = max(regret, key=lambda p: regret[p])
    return regret[pair], pair


@dataclass
class PairResult:
    pair: Pair
    metric: str | None
    teacher: Teacher | None
    baseline: Cell | None
    best: Config | None
    best_cell: Cell | None
    n_configs: int
    default: Config | None = None
    default_cell: Cell | None = None
    worst: Config | None = None  # the lowest validation score
    worst_cell: Cell | None = None

    @property
    def gain(self) -> float | None:
        if self.best_cell is None or self.baseline is None:
            return None
        return self.best_cell.test_mean - self.baseline.test_mean

    @property
    def gain_seeds(self) -> dict[int, float]:
        if self.best_cell is None or self.baseline is None:
            return {}
        return _paired(self.best_cell, self.baseline)

    @property
    def best_minus_worst(self) -> float | None:
        if self.best_cell is None or self.worst_cell is None:
            return None
        return self.best_cell.test_mean - self.worst_cell.test_mean

    @property
    def best_minus_default(self) -> float | None:
        if self.best_cell is None or self.default_cell is None:
            return None
        return self.best_cell.test_mean - self.default_cell.test_mean


@dataclass
class Scored:
    """Per-pair test scores and regrets of one choice (an option, or a configuration)."""

    chosen: dict[Pair, Config] = field(default_factory=dict)
    scores: dict[Pair, float] = field(default_factory=dict)
    seed_scores: dict[Pair, dict[int, float]] = field(default_factory=dict)
    regret: dict[Pair, float] = field(default_factory=dict)
    seed_regret: dict[Pair, dict[int, float]] = field(default_factory=dict)

    def add(self, pair: Pair, config: Config, cell: Cell, best: Cell) -> None:
        self.chosen[pair] = config
        self.scores[pair] = cell.test_mean
        self.seed_scores[pair] = dict(cell.test)
        self.regret[pair] = best.test_mean - cell.test_mean
        self.seed_regret[pair] = _paired(best, cell)

    @property
    def n_pairs(self) -> int:
        return len(self.regret)

    @property
    def mean_score(self) -> float | None:
        return float(np.mean(list(self.scores.values()))) if self.scores else None

    @property
    def mean_regret(self) -> float | None:
        return float(np.mean(list(self.regret.values()))) if self.regret else None

    @property
    def regret_std(self) -> float | None:
        """Spread over seeds of the mean regret."""
        return seed_spread(self.seed_regret)

    @property
    def worst_regret(self) -> float | None:
        return _worst(self.regret)[0]

    @property
    def worst_pair(self) -> Pair | None:
        return _worst(self.regret)[1]


@dataclass
class OptionEffect(Scored):
    axis: str = ""
    option: Any = None
    missing: list[Pair] = field(default_factory=list)  # pairs with results, none with this option


@dataclass
class AxisEffect:
    axis: str
    default: Any
    options: list[OptionEffect]
    best_option: Any
    comparisons: list[Comparison]  # each other option against the best option
    per_pair: dict[Pair, dict[str, Any]]  # best_minus_worst, worst_option, best_minus_default

    def option(self, value: Any) -> OptionEffect:
        return next(o for o in self.options if o.option == value)


@dataclass
class Ranked(Scored):
    config: Config | None = None
    mean_norm_val: float = 0.0


@dataclass
class Effects:
    study: Study
    pairs: dict[Pair, PairResult]
    active: list[Pair]  # pairs with at least one finished configuration
    axes: dict[str, AxisEffect]
    ranking: list[Ranked]
    ranking_coverage: int  # pairs each ranked configuration was run on
    diagnostics: dict[str, dict[Any, dict[str, tuple[float, int]]]]
    grid: dict[Any, dict[Any, tuple[float, int]]]  # distance -> tau_t -> (mean test, pairs)

    @property
    def best_single(self) -> Ranked | None:
        return self.ranking[0] if self.ranking else None

    @property
    def ranking_complete(self) -> bool:
        return self.ranking_coverage == len(self.active) and bool(self.ranking)


def _pair_results(study: Study, default: dict[str, Any]) -> dict[Pair, PairResult]:
    out = {}
    for pair in study.pairs:
        cells = study.candidates(pair)
        best = study.best(pair)
        worst = min(cells, key=lambda c: cells[c].val_mean) if cells else None
        dflt = study.best(pair, default) if default else None
        kd = [c for c in cells if not c.is_baseline]
        out[pair] = PairResult(
            pair,
            study.metric.get(pair[0]),
            study.teachers.get(pair[0]),
            study.baseline(pair),
            best,
            cells.get(best),
            len(kd),
            dflt,
            cells.get(dflt),
            worst,
            cells.get(worst),
        )
    return out


def option_effect(
    study: Study, results: dict[Pair, PairResult], axis: str, option: Any
) -> OptionEffect:
    """Per pair: the validation-best configuration with `option` on `axis`, and its regret."""
    eff = OptionEffect(axis=axis, option=option)
    for pair, r in results.items():
        if r.best_cell is None:
            continue
        c = study.best(pair, {axis: option})
        if c is None:
            eff.missing.append(pair)
        else:
            eff.add(pair, c, study.candidates(pair)[c], r.best_cell)
    return eff


def _axis_effect(
    study: Study, results: dict[Pair, PairResult], axis: str, default: Any, n_boot: int, seed: int
) -> AxisEffect:
    options = [option_effect(study, results, axis, o) for o in study.axes[axis]]
    scored = [o for o in options if o.n_pairs]
    best = min(scored, key=lambda o: o.mean_regret).option if scored else None
    comparisons = []
    if best is not None:
        ref = next(o for o in options if o.option == best)
        for o in scored:
            if o.option != best:
                comparisons.append(
                    compare_units(
                        axis, best, o.option, ref.seed_scores, o.seed_scores, n_boot, seed
                    )
                )
    per_pair: dict[Pair, dict[str, Any]] = {}
    for pair, r in results.items():
        here = [o for o in options if pair in o.regret]
        if r.best_cell is None or not here:
            continue
        cells = study.candidates(pair)
        worst = min(here, key=lambda o: cells[o.chosen[pair]].val_mean)
        dflt = next((o for o in here if o.option == default), None)
        per_pair[pair] = {
            "best_option": next((o.option for o in here if r.best.has(axis, o.option)), None),
            "worst_option": worst.option,
            "best_minus_worst": worst.regret[pair],
            "best_minus_default": dflt.regret[pair] if dflt else None,
        }
    return AxisEffect(axis, default, options, best, comparisons, per_pair)


def _ranking(
    study: Study, results: dict[Pair, PairResult], active: list[Pair]
) -> tuple[list[Ranked], int]:
    """Configurations on the most pairs (every active pair when complete), best first."""
    coverage: dict[Config, list[Pair]] = {}
    for pair in active:
        for c in study.candidates(pair):
            coverage.setdefault(c, []).append(pair)
    if not coverage:
        return [], 0
    most = max(len(v) for v in coverage.values())
    ranked = []
    for c, pairs in coverage.items():
        if len(pairs) != most:
            continue
        r = Ranked(config=c)
        norm = []
        for pair in pairs:
            best = results[pair].best_cell
            cell = study.candidates(pair)[c]
            norm.append(cell.val_mean / best.val_mean if best.val_mean > 0 else 1.0)
            r.add(pair, c, cell, best)
        r.mean_norm_val = float(np.mean(norm))
        ranked.append(r)
    ranked.sort(key=lambda r: -r.mean_norm_val)  # stable: ledger order breaks ties
    return ranked, most


def analyse(
    study: Study,
    default: dict[str, Any] | Config | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> Effects:
    """All the study's effects. `default`: axis -> option (given form) or a configuration;
    by default the first option of every axis."""
    if isinstance(default, Config):
        default = {a: default.given_value(a) for a in study.axes}
    default = dict(default or {a: opts[0] for a, opts in study.axes.items()})
    results = _pair_results(study, default)
    active = [p for p, r in results.items() if r.best_cell is not None]
    axes = {a: _axis_effect(study, results, a, default.get(a), n_boot, seed) for a in study.swept}
    ranking, coverage = _ranking(study, results, active)
    shown = [a for a in ("distance", "tau_t", "tau_s") if a in study.axes]
    shown = [a for a in shown if a != "tau_s" or a in study.swept]  # tau_s only when varied
    diagnostics = {a: diagnostics_by(study, a) for a in shown}
    grid = score_grid(study, active, "distance", "tau_t")
    return Effects(study, results, active, axes, ranking, coverage, diagnostics, grid)


def compare(
    effects: Effects, axis: str, a: Any, b: Any, n_boot: int = 2000, seed: int = 0
) -> Comparison:
    """Paired bootstrap of option `a` minus option `b` of `axis` (test, pairs x seeds)."""
    study, results = effects.study, effects.pairs
    ea, eb = (option_effect(study, results, axis, o) for o in (a, b))
    return compare_units(axis, a, b, ea.seed_scores, eb.seed_scores, n_boot, seed)
