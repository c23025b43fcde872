"""Paired contrasts: the configurations of a pair that differ in one axis only.

For an axis, a *group* is a center configuration and, for each option of the axis, the pair's
configuration having that option with every other knob the same. Effects are test differences
inside one group, so no option is credited with another axis's tuning. Which group a pair
contributes (one per pair and axis):

1. a group with every option of the axis (a greedy stage's runs share everything but its axis);
2. then one holding a run of the sensitivity stage (one knob changed around the optimum);
3. then the group around the pair's validation-best configuration (under a grid: the other
   knobs at the pair's validation-best setting);
4. then the group with the most options, then the most recent one (the closest to the end of
   the search).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdjax.analysis.configs import Config, Pair
from kdjax.analysis.load import Cell, Study

SENSITIVITY = "sensitivity"


@dataclass(frozen=True)
class Group:
    center: Config
    members: dict[Any, Config]  # option (given form) -> configuration; one may serve two
    source: str  # sensitivity | within-stage | grid | partial


def _agree(study: Study, a: Config, b: Config, axis: str) -> int:
    """How `b` matches `a` on `axis`: 2 same value as given, 1 the same option (tau_s 1 and
    'same' at tau_t 1), 0 different."""
    if a.given_value(axis) == b.given_value(axis):
        return 2
    if axis == "tau_s":
        return int(any(a.has(axis, o) and b.has(axis, o) for o in study.axes.get(axis, [])))
    return int(a[axis] == b[axis])


def _neighbours(study: Study, cells: dict[Config, Cell], center: Config, axis: str) -> Group:
    others = [a for a in study.axes if a != axis]
    members: dict[Any, Config] = {}
    for option in study.axes[axis]:
        if center.has(axis, option):
            members[option] = center
            continue
        best, score = None, -1
        for c in cells:
            if c.is_baseline or not c.has(axis, option):
                continue
            agree = [_agree(study, center, c, a) for a in others]
            if min(agree, default=2) and sum(agree) > score:
                best, score = c, sum(agree)
        if best is not None:
            members[option] = best
    return Group(center, members, "")


def _source(study: Study, group: Group, cells: dict[Config, Cell], n_options: int) -> str:
    stages = {s for c in set(group.members.values()) for s in cells[c].stages}
    if SENSITIVITY in stages:
        return SENSITIVITY
    if len(group.members) < n_options:
        return "partial"
    return "grid" if study.strategy == "grid" else "within-stage"


def choose_group(study: Study, pair: Pair, axis: str) -> Group | None:
    """The group of `pair` that `axis`'s contrasts come from (None: no two options)."""
    cells = {c: x for c, x in study.candidates(pair).items() if not c.is_baseline}
    if not cells:
        return None
    best = study.best(pair)
    n_options = len(study.axes[axis])
    has_sensitivity = any(SENSITIVITY in x.stages for x in cells.values())
    if best in cells and not has_sensitivity:  # a full group around the best ranks first
        g = _neighbours(study, cells, best, axis)
        if len(g.members) == n_options:
            return Group(best, g.members, _source(study, g, cells, n_options))
    ranked = []
    for center in cells:
        g = _neighbours(study, cells, center, axis)
        if len(set(g.members.values())) < 2 and len(g.members) < 2:
            continue
        g = Group(center, g.members, _source(study, g, cells, n_options))
        order = max(cells[c].order for c in g.members.values())
        full = len(g.members) == n_options
        key = (full, g.source == SENSITIVITY, center == best, len(g.members), order)
        ranked.append((key, g))
    if not ranked:
        return None
    return max(ranked, key=lambda kg: kg[0])[1]
