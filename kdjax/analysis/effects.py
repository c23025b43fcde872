"""What each option costs: fair, paired effects chosen on validation and reported on test.

For an axis, each pair contributes the groups of configurations that differ in that axis only
(`contrasts.choose_groups`: every setting of the other knobs under a grid, the group around the
greedy optimum otherwise). The axis's best option is the one with the highest validation score
in those groups (each group centred on its mean, averaged over a pair's groups, then over
pairs). An option's effect is its test score minus the best option's in the same group and
seed, averaged over seeds, groups and then pairs, in points: 0 for the best option, negative
for worse ones. Pairs whose student never moves (`degenerate.stuck_pairs`) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kdjax.analysis.configs import Config, Pair, fmt_value
from kdjax.analysis.contrasts import Group, choose_groups
from kdjax.analysis.degenerate import stuck_pairs
from kdjax.analysis.load import Study
from kdjax.analysis.stats import PTS, PairContrast, Test, compare_cells, holm

MANIFEST_NAME = {"teacher_checkpoint": "teacher"}
COLUMNS = ["axis", "option", "effect", "ci_low", "ci_high", "p_value", "verdict", "n_pairs"]


@dataclass
class OptionEffect:
    axis: str
    option: Any
    is_best: bool
    contrasts: dict[Pair, PairContrast] = field(default_factory=dict)
    test: Test | None = None
    p_adjusted: float | None = None  # Holm, within the effects table

    @property
    def n_pairs(self) -> int:
        return len(self.contrasts)

    @property
    def effect(self) -> float | None:
        """Mean test difference to the axis's best option, in points."""
        if self.is_best:
            return 0.0 if self.contrasts else None
        return self.test.estimate * PTS if self.test and self.contrasts else None

    @property
    def interval(self) -> tuple[float | None, float | None]:
        if self.is_best:
            return (0.0, 0.0) if self.contrasts else (None, None)
        t = self.test
        if t is None or t.lo is None:
            return None, None
        return t.lo * PTS, t.hi * PTS

    @property
    def verdict(self) -> str:
        if self.is_best:
            return "best option (chosen on validation)"
        if not self.contrasts or self.test is None:
            return "no pair ran this option next to the best one"
        return self.test.verdict(self.p_adjusted)

    def per_pair(self) -> dict[Pair, float]:
        """Each pair's contrast (mean over seeds), in points."""
        return {p: c.mean * PTS for p, c in self.contrasts.items()}


@dataclass
class AxisEffect:
    axis: str
    best: Any  # chosen on validation
    options: list[OptionEffect]
    groups: dict[Pair, list[Group]]
    val_scores: dict[Any, float]  # option -> mean centred validation score (points)

    def option(self, value: Any) -> OptionEffect:
        return next(o for o in self.options if o.option == value)

    def sources(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for gs in self.groups.values():
            for src in {g.source for g in gs}:
                out[src] = out.get(src, 0) + 1
        return out


def _best_on_validation(
    study: Study, axis: str, groups: dict[Pair, list[Group]]
) -> tuple[Any, dict]:
    """The option with the highest validation score in the groups, each group centred on its
    mean, averaged over a pair's groups and then over pairs."""
    scores: dict[Any, list[float]] = {}
    for pair, gs in groups.items():
        cells = study.cells[pair]
        per_pair: dict[Any, list[float]] = {}
        for g in gs:
            vals = {o: cells[c].val_mean for o, c in g.members.items()}
            centre = float(np.mean(list(vals.values())))
            for o, v in vals.items():
                per_pair.setdefault(o, []).append(v - centre)
        for o, v in per_pair.items():
            scores.setdefault(o, []).append(float(np.mean(v)))
    means = {o: float(np.mean(v)) * PTS for o, v in scores.items()}
    ordered = [o for o in study.axes[axis] if o in means]
    return (max(ordered, key=lambda o: means[o]) if ordered else None), means


def axis_effect(
    study: Study, axis: str, pairs: list[Pair], n_boot: int = 1000, seed: int = 0
) -> AxisEffect:
    """Effects of every option of `axis` over `pairs` (p-values not yet Holm-adjusted)."""
    groups = {p: gs for p in pairs if (gs := choose_groups(study, p, axis))}
    best, val_scores = _best_on_validation(study, axis, groups)
    options = []
    for o in study.axes[axis]:
        eff = OptionEffect(axis, o, o == best)
        for pair, gs in groups.items():
            cells = study.cells[pair]
            couples = tuple(
                (cells[g.members[o]], cells[g.members[best]])
                for g in gs
                if best in g.members and o in g.members
            )
            if couples:
                c = PairContrast(pair[0], *couples[0], more=couples[1:])
                if c.seeds:
                    eff.contrasts[pair] = c
        if not eff.is_best and eff.contrasts:
            eff.test = compare_cells(list(eff.contrasts.values()), n_boot, seed)
        options.append(eff)
    return AxisEffect(axis, best, options, groups, val_scores)


def active_pairs(study: Study) -> list[Pair]:
    """Pairs with a finished KD configuration whose student moves (see degenerate.py)."""
    stuck = stuck_pairs(study)
    return [
        p
        for p in study.pairs
        if p not in stuck and any(not c.is_baseline for c in study.cells.get(p, {}))
    ]


def all_axis_effects(study: Study, n_boot: int = 1000, seed: int = 0) -> dict[str, AxisEffect]:
    """Every swept axis's effects, with Holm's correction over the whole table."""
    pairs = active_pairs(study)
    axes = {a: axis_effect(study, a, pairs, n_boot, seed) for a in study.swept}
    rows = [o for e in axes.values() for o in e.options if o.test is not None]
    for o, p in zip(rows, holm([o.test.p for o in rows]), strict=True):
        o.p_adjusted = p
    return axes


def frame(axes: dict[str, AxisEffect]) -> Any:
    """The effects table (pandas): one row per (axis, option), effect in points."""
    import pandas as pd

    rows = []
    for axis, e in axes.items():
        for o in e.options:
            lo, hi = o.interval
            rows.append(
                {
                    "axis": MANIFEST_NAME.get(axis, axis),
                    "option": fmt_value(o.option),
                    "effect": o.effect,
                    "ci_low": lo,
                    "ci_high": hi,
                    "p_value": o.p_adjusted,
                    "verdict": o.verdict,
                    "n_pairs": o.n_pairs,
                }
            )
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype({"effect": float, "ci_low": float, "ci_high": float, "p_value": float})


def config_dict(c: Config) -> dict[str, Any]:
    """A configuration with the manifest's axis names (tau_s as given: a number or 'same')."""
    if c.is_baseline:
        return {"teacher": None, "distance": None, "alpha": 0.0, "tau_t": None, "tau_s": None}
    return {
        MANIFEST_NAME.get(a, a): c.given_value(a)
        for a in ("teacher_checkpoint", "distance", "alpha", "tau_t", "tau_s")
    }
