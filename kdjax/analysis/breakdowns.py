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


def score_grid(
    study: Study, pairs: list[Pair], line: str, x: str
) -> dict[Any, dict[Any, tuple[float, int]]]:
    """Mean over pairs of the test score with `line` and `x` fixed (others at their best)."""
    out: dict[Any, dict[Any, tuple[float, int]]] = {}
    for lo in study.axes.get(line, []):
        for xo in study.axes.get(x, []):
            per_pair = {}
            for pair in pairs:
                c = study.best(pair, {line: lo, x: xo})
                if c is not None:
                    per_pair[pair] = [study.candidates(pair)[c].test_mean]
            m = _mean_over_pairs(per_pair)
            if m is not None:
                out.setdefault(lo, {})[xo] = m
    return out
