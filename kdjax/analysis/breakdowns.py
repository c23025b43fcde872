"""Breakdowns over two axes at once and per-option diagnostics, averaged over pairs."""

from __future__ import annotations

from typing import Any

import numpy as np

from kdjax.analysis.configs import Pair
from kdjax.analysis.load import Study


def _mean_over_pairs(per_pair: dict[Pair, list[float]]) -> tuple[float, int] | None:
    vals = [float(np.mean(v)) for v in per_pair.values() if v]
    return (float(np.mean(vals)), len(vals)) if vals else None


def diagnostics_by(study: Study, axis: str) -> dict[Any, dict[str, tuple[float, int]]]:
    """Per option of `axis` (and for no KD): each diagnostic averaged over the pair's runs
    with that option, then over pairs; with the number of pairs."""
    keys = sorted(
        {
            k
            for p in study.pairs
            for c in study.cells[p].values()
            for d in c.diag.values()
            for k in d
        }
    )
    groups: list[tuple[Any, Any]] = [
        (o, lambda c, o=o: c.has(axis, o) and not c.is_baseline) for o in study.axes.get(axis, [])
    ]
    groups.append(("no KD", lambda c: c.is_baseline))
    out: dict[Any, dict[str, tuple[float, int]]] = {}
    for option, match in groups:
        row = {}
        for k in keys:
            per_pair = {
                p: [
                    d[k]
                    for c, cell in study.cells[p].items()
                    if match(c)
                    for d in cell.diag.values()
                    if k in d
                ]
                for p in study.pairs
            }
            m = _mean_over_pairs(per_pair)
            if m is not None:
                row[k] = m
        if row:
            out[option] = row
    return out


def task_of(study: Study) -> dict[str, str]:
    """Dataset -> task family, from the ledger's task column."""
    out: dict[str, str] = {}
    for r in study.rows:
        if r.get("task"):
            out.setdefault(r["dataset"], r["task"])
    return out


def effects_by(results: Any, by: str) -> Any:
    """Per (axis, option) that is not the best: the mean contrast (points) over the pairs of
    each task family (`by="task"`) or student (`by="student"`), as a pandas DataFrame of
    "effect (pairs)" strings; there is no test per cell (few pairs each)."""
    import pandas as pd

    task = task_of(results.study)
    rows = []
    for axis, eff in results.axes.items():
        for o in eff.options:
            if o.is_best:
                continue
            for pair, v in o.per_pair().items():
                group = task.get(pair[0], "?") if by == "task" else pair[1]
                rows.append({"axis": axis, "option": o.option, "group": group, "effect": v})
    if not rows:
        return None
    df = pd.DataFrame(rows)
    agg = df.groupby(["axis", "option", "group"], sort=False)["effect"].agg(["mean", "count"])
    cell = agg.apply(lambda r: f"{r['mean']:.2f} ({int(r['count'])})", axis=1)
    return cell.unstack("group").fillna("-")
