"""Uncertainty: spread over seeds and paired bootstrap intervals for differences."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kdjax.analysis.configs import Pair


@dataclass(frozen=True)
class Comparison:
    """`a` minus `b` on test, paired over (pair, seed) units, with a bootstrap interval."""

    axis: str
    a: Any
    b: Any
    diff: float
    lo: float | None
    hi: float | None
    n_units: int
    n_pairs: int
    level: float = 0.95

    @property
    def within_noise(self) -> bool | None:
        """True when the interval contains 0; None when there are too few units to tell."""
        if self.lo is None or self.hi is None:
            return None
        return self.lo <= 0.0 <= self.hi

    @property
    def verdict(self) -> str:
        if self.within_noise is None:
            return "too few runs to tell"
        pct = round(self.level * 100)
        return f"within noise ({pct}% CI contains 0)" if self.within_noise else "significant"


def bootstrap_mean(
    values: list[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float | None, float | None]:
    """Mean and percentile bootstrap interval of the mean; no interval below 2 values."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return float("nan"), None, None
    if len(x) < 2:
        return float(x.mean()), None, None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(x.mean()), float(lo), float(hi)


def paired_units(a: dict[Pair, dict[int, float]], b: dict[Pair, dict[int, float]]) -> list[float]:
    """Per-seed differences a - b on the pairs and seeds both have."""
    out = []
    for pair in a:
        if pair in b:
            out += [a[pair][s] - b[pair][s] for s in sorted(a[pair]) if s in b[pair]]
    return out


def compare_units(
    axis: str,
    a: Any,
    b: Any,
    a_scores: dict[Pair, dict[int, float]],
    b_scores: dict[Pair, dict[int, float]],
    n_boot: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Compare two options from their per-pair, per-seed test scores."""
    units = paired_units(a_scores, b_scores)
    diff, lo, hi = bootstrap_mean(units, n_boot, seed)
    n_pairs = len(set(a_scores) & set(b_scores))
    return Comparison(axis, a, b, diff, lo, hi, len(units), n_pairs)


def seed_spread(per_pair: dict[Pair, dict[int, float]]) -> float | None:
    """Std over seeds of the mean over pairs (each seed's mean uses the pairs that have it);
    None with fewer than two seeds."""
    seeds = sorted({s for d in per_pair.values() for s in d})
    if len(seeds) < 2:
        return None
    means = [np.mean([d[s] for d in per_pair.values() if s in d]) for s in seeds]
    return float(np.std(means, ddof=1))


def mean_std(values: dict[int, float]) -> tuple[float, float | None]:
    """Mean and sample std over seeds (std None for one seed)."""
    v = list(values.values())
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None)
