"""Paired contrasts: the configurations of a pair that differ in one axis only.

For an axis, a *group* is a center configuration and, for each option of the axis, the pair's
configuration having that option with every other knob the same. Effects are test differences
inside one group, so no option is credited with another axis's tuning. Which group a pair
contributes (one per pair and axis):

1. a group with every option of the axis (a greedy stage's runs share everything but its axis);
2. then the group around the sensitivity stage's center (the greedy optimum: the configuration
   its runs are one knob away from), then any group holding a sensitivity run;
3. then the group around the pair's validation-best configuration;
4. then the group with the most options, then the most recent one (the closest to the end of
   the search).

Under a grid (no sensitivity runs) every complete group counts: the contrast at every setting of
the other knobs, averaged. Its centers were not selected on validation, so the winner's curse
(a run picked for a lucky validation score is often lucky on test too, when the luck is the
training seed's) does not favour any option; a greedy optimum's own runs were selected, which
can favour the optimum's options slightly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdjax.analysis.configs import BASELINE, Config, Pair
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


def _no_kd(study: Study, pair: Pair, axis: str, members: dict[Any, Config]) -> None:
    """Alpha 0 listed as an option: the no-KD run is that option at every setting."""
    if axis == "alpha" and BASELINE in study.candidates(pair):
        for o in study.axes[axis]:
            if BASELINE.has(axis, o):
                members[o] = BASELINE


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
    stages = {s for c in set(group.members.values()) if c in cells for s in cells[c].stages}
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
        _no_kd(study, pair, axis, g.members)
        if len(g.members) == n_options:
            return Group(best, g.members, _source(study, g, cells, n_options))
    ranked = []
    hub = _sensitivity_center(study, cells) if has_sensitivity else None
    for center in cells:
        g = _neighbours(study, cells, center, axis)
        _no_kd(study, pair, axis, g.members)
        if len(set(g.members.values())) < 2 and len(g.members) < 2:
            continue
        source = _source(study, g, cells, n_options)
        if center == hub and source != "partial":  # around the optimum: the sensitivity check
            source = SENSITIVITY
        g = Group(center, g.members, source)
        order = max(cells[c].order for c in g.members.values() if c in cells)
        full = len(g.members) == n_options
        key = (full, center == hub, g.source == SENSITIVITY, center == best, len(g.members), order)
        ranked.append((key, g))
    if not ranked:
        return None
    return max(ranked, key=lambda kg: kg[0])[1]


def _sensitivity_center(study: Study, cells: dict[Config, Cell]) -> Config | None:
    """The configuration the most sensitivity-stage runs are one knob away from."""
    runs = [c for c, x in cells.items() if SENSITIVITY in x.stages]
    axes = list(study.axes)

    def one_knob(a: Config, b: Config) -> bool:
        return sum(_agree(study, a, b, ax) == 0 for ax in axes) == 1

    scores = {c: sum(one_knob(c, r) for r in runs) for c in cells}
    return max(scores, key=lambda c: scores[c]) if scores else None


def _grid_groups(study: Study, pair: Pair, cells: dict[Config, Cell], axis: str) -> list[Group]:
    """Every complete group of a grid: one per setting of the other knobs."""
    options = study.axes[axis]
    buckets: dict[tuple, dict[Any, Config]] = {}
    for c in cells:
        key = tuple((b, c.given_value(b)) for b in study.axes if b != axis)
        for o in options:
            if c.has(axis, o):
                buckets.setdefault(key, {}).setdefault(o, c)
    if axis == "tau_t":  # tau_s = x at tau_t = x is stored as tau_s 'same'
        for key, members in buckets.items():
            x = dict(key).get("tau_s")
            if isinstance(x, float) and x in options and x not in members:
                alt = tuple((b, "same" if b == "tau_s" else v) for b, v in key)
                if x in buckets.get(alt, {}):
                    members[x] = buckets[alt][x]
    for members in buckets.values():
        _no_kd(study, pair, axis, members)
    return [
        Group(next(iter(m.values())), m, "grid") for m in buckets.values() if len(m) == len(options)
    ]


def choose_groups(study: Study, pair: Pair, axis: str) -> list[Group]:
    """The groups `pair` contributes to `axis`: every complete one under a grid, else the one
    `choose_group` ranks first (none when no two options ran next to each other)."""
    cells = {c: x for c, x in study.candidates(pair).items() if not c.is_baseline}
    sensitivity = any(SENSITIVITY in x.stages for x in cells.values())
    if study.strategy == "grid" and not sensitivity:
        groups = _grid_groups(study, pair, cells, axis)
        if groups:
            return groups
    g = choose_group(study, pair, axis)
    return [] if g is None else [g]
