"""Uncertainty of paired contrasts: across pairs, or within pairs from test-example noise.

Two levels, never mixed in one interval:

- **across pairs** (a claim about dataset–student pairs like these; needs >= MIN_PAIRS pairs):
  the unit is the pair; each pair's contrast is its mean over seeds and test examples, so seed
  and test-set noise are inside it. Resampling seeds and examples again on top of resampling
  pairs would count that noise twice (Davison & Hinkley 1997, sec. 3.8, two-stage sampling);
  with 5-40 units a percentile interval is too narrow, so the interval and the test are
  Student-t over the pair contrasts (`scipy.stats.ttest_1samp`).
- **within pairs** (a statement about these pairs only). With two or more seeds (level
  "seeds"): every seed gives a paired contrast, which already holds that run's own test-example
  noise; the seed-to-seed variance is the pooled residual variance of those seed contrasts around
  their pair means (one-way ANOVA within-group mean square, pooled over the pairs of the
  comparison), the variance of the mean is sum_p s^2 / n_p / P^2, and the interval and test are
  Student-t with the pooled degrees of freedom sum_p (n_p - 1). Where per-example outcomes
  were kept, the test-example SE below (which also holds test-set noise shared by every seed)
  is computed too and is a floor: when the seed contrasts spread no more than test-example
  noise explains, that SE (estimated from thousands of examples, so a normal quantile) is
  used instead. With one seed (level
  "examples"): a paired bootstrap over test examples (Poisson weights, one draw per dataset
  shared by every seed, option and student, because they all saw the same test set), with
  McNemar's exact test (`scipy.stats.binomtest` on the discordant examples) for one pair, one
  seed and 0/1 outcomes. Seed-to-seed variation is not in that one: the report says so.

Every comparison carries its minimum detectable effect: the true difference it would detect
with 80% power at alpha 0.05, (q_{1-alpha/2} + q_{power}) x SE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from kdjax.analysis.load import Cell, Outcomes

ALPHA = 0.05
POWER = 0.80
MIN_PAIRS = 5  # fewer pairs: no claim beyond the pairs themselves
PTS = 100.0


@dataclass(frozen=True)
class Test:
    """`a - b` on test (metric units, not points) with its uncertainty.

    `level`: "pairs" (across pairs, Student-t), "seeds" (these pairs only, Student-t over the
    seed contrasts with the seed variance pooled over pairs: seed and test-example noise),
    "examples" (these pairs only, one seed: test-example bootstrap, no seed noise),
    "identical" (every paired result equal: the same runs), or "none" (no claim).
    """

    estimate: float
    lo: float | None = None
    hi: float | None = None
    p: float | None = None
    se: float | None = None
    mde: float | None = None
    n_pairs: int = 0
    level: str = "none"
    reason: str = ""
    df: float | None = None  # Student-t degrees of freedom of the interval; None: normal

    def verdict(self, p_adjusted: float | None = None) -> str:
        """A sentence: 'worse by 2.1 pt (p=0.003)', 'no detectable difference (MDE 1.8 pt)'."""
        if self.level == "identical":
            return "identical runs (every paired result equal)"
        if self.level == "none":
            return f"no claim: {self.reason}"
        p = self.p if p_adjusted is None else p_adjusted
        scope = {
            "examples": "these pairs only, test-example noise: ",
            "seeds": "these pairs only, seed and test-example noise: ",
        }.get(self.level, "")
        if p is not None and p < ALPHA:
            word = "worse" if self.estimate < 0 else "better"
            return f"{scope}{word} by {abs(self.estimate) * PTS:.1f} pt ({_p(p)})"
        mde = f"MDE {self.mde * PTS:.1f} pt" if self.mde is not None else "MDE unknown"
        return f"{scope}no detectable difference ({mde})"


def _p(p: float) -> str:
    return f"p={p:.2g}" if p >= 0.001 else "p<0.001"


def mde_from_se(se: float, df: float | None = None) -> float:
    """Minimum detectable effect at 80% power, two-sided alpha 0.05, from a standard error;
    Student-t quantiles with `df` degrees of freedom, normal ones without."""
    dist = stats.t(df) if df else stats.norm
    return float((dist.ppf(1 - ALPHA / 2) + dist.ppf(POWER)) * se)


def across_pairs(contrasts: Sequence[float]) -> Test:
    """Student-t interval and test for the mean of per-pair contrasts (>= MIN_PAIRS pairs)."""
    x = np.asarray(contrasts, dtype=float)
    n = len(x)
    if n < MIN_PAIRS:
        return Test(float(x.mean()) if n else float("nan"), n_pairs=n, reason=_few(n))
    if np.all(x == 0):
        return Test(0.0, 0.0, 0.0, 1.0, 0.0, 0.0, n, "identical")
    if np.all(x == x[0]):  # no spread: the t statistic is undefined
        m = float(x[0])
        return Test(m, m, m, 0.0, 0.0, 0.0, n, "pairs")
    res = stats.ttest_1samp(x, 0.0)
    ci = res.confidence_interval(1 - ALPHA)
    se = float(x.std(ddof=1) / np.sqrt(n))
    return Test(
        float(x.mean()), float(ci.low), float(ci.high), float(res.pvalue), se,
        mde_from_se(se, n - 1), n, "pairs", df=n - 1,
    )  # fmt: skip


def _few(n: int) -> str:
    return f"{n} pair(s) (< {MIN_PAIRS}): no cross-pair claim"


@dataclass(frozen=True)
class PairContrast:
    """One pair's paired contrast: runs of configuration `a` minus runs of `b`, by seed; under
    a grid, `more` holds the same contrast at the other settings of the other knobs, and the
    pair's contrast is the mean over all of them."""

    dataset: str
    a: Cell
    b: Cell
    more: tuple[tuple[Cell, Cell], ...] = ()

    @property
    def couples(self) -> list[tuple[Cell, Cell]]:
        return [(self.a, self.b), *self.more]

    @property
    def seeds(self) -> list[int]:
        common = [set(a.test) & set(b.test) for a, b in self.couples]
        return sorted(set.intersection(*common))

    @property
    def by_seed(self) -> dict[int, float]:
        return {
            s: float(np.mean([a.test[s] - b.test[s] for a, b in self.couples])) for s in self.seeds
        }

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.by_seed.values())))

    @property
    def identical(self) -> bool:
        return all(
            a is b or all(a.test[s] == b.test[s] for s in self.seeds) for a, b in self.couples
        )

    def outcome_runs(self) -> list[tuple[Outcomes, Outcomes]]:
        """(a, b) per-example outcomes of every couple and seed that kept them."""
        return [
            (a.outcomes[s], b.outcomes[s])
            for a, b in self.couples
            for s in self.seeds
            if s in a.outcomes and s in b.outcomes
        ]


def _index(out: Outcomes, universe: dict[str, int]) -> np.ndarray:
    for i in out.ids:
        universe.setdefault(i, len(universe))
    return np.fromiter((universe[i] for i in out.ids), dtype=np.int64, count=out.n)


def within_pairs(
    contrasts: Sequence[PairContrast],
    n_boot: int = 1000,
    seed: int = 0,
    pool: Sequence[PairContrast] | None = None,
) -> Test:
    """The mean over `contrasts` of each pair's seed-averaged contrast (these pairs only):
    Student-t over seed contrasts when any pair has two seeds, else a paired bootstrap over test
    examples. No claim with one seed when a pair lacks per-example outcomes. `pool`: the
    contrasts whose seed residuals give the seed variance (default `contrasts`; a table's
    per-pair tests pass the same comparison on every pair, for more degrees of freedom)."""
    n = len(contrasts)
    if not n:
        return Test(float("nan"), reason="no pair has both options")
    estimate = float(np.mean([c.mean for c in contrasts]))
    if all(c.identical for c in contrasts):
        return Test(0.0, 0.0, 0.0, 1.0, 0.0, 0.0, n, "identical")
    lacking = [c for c in contrasts if not c.outcome_runs()]
    ss, df = seed_pool(contrasts if pool is None else pool)
    if df > 0:  # >= 2 seeds somewhere: seed noise goes in
        ex_se = None if lacking else _example_se(contrasts, n_boot, seed)
        return _over_seeds(contrasts, estimate, ss / df, df, ex_se)
    if lacking:
        why = f"{len(lacking)} of {n} pair(s) have no per-example test outcomes"
        return Test(estimate, n_pairs=n, reason=f"{_few(n)}; {why}")
    if n == 1 and _mcnemar_ok(contrasts[0]):
        return _mcnemar(contrasts[0])
    se = _example_se(contrasts, n_boot, seed)
    if se == 0:
        return Test(estimate, estimate, estimate, None, 0.0, 0.0, n, "examples")
    z = stats.norm.ppf(1 - ALPHA / 2)
    p = float(2 * stats.norm.sf(abs(estimate) / se))
    return Test(
        estimate, estimate - z * se, estimate + z * se, p, se, mde_from_se(se), n, "examples"
    )


def seed_pool(contrasts: Sequence[PairContrast]) -> tuple[float, int]:
    """Sum of squares of the seed contrasts around their pair's mean, and its degrees of
    freedom, pooled over `contrasts` (pairs with one seed and identical runs add nothing)."""
    ss, df = 0.0, 0
    for c in contrasts:
        if c.identical:
            continue
        x = np.fromiter(c.by_seed.values(), dtype=float)
        if len(x) > 1:
            ss += float(((x - x.mean()) ** 2).sum())
            df += len(x) - 1
    return ss, df


def _over_seeds(
    contrasts: Sequence[PairContrast], estimate: float, var: float, df: int, ex_se: float | None
) -> Test:
    """Student-t with `df` degrees of freedom from the pooled seed variance `var` (see module
    doc); a pair with one seed gets the pooled variance too. `ex_se`: the test-example SE, a
    floor (normal quantile when it is the larger)."""
    n = len(contrasts)
    se = float(np.sqrt(sum(var / len(c.seeds) for c in contrasts)) / n)
    if ex_se is not None and ex_se >= se:  # no more spread than test examples explain
        se, df = ex_se, 0
    if se == 0:
        return Test(estimate, estimate, estimate, None, 0.0, 0.0, n, "seeds")
    dist = stats.t(df) if df else stats.norm
    q = dist.ppf(1 - ALPHA / 2)
    p = float(2 * dist.sf(abs(estimate) / se))
    return Test(
        estimate, estimate - q * se, estimate + q * se, p, se, mde_from_se(se, df), n, "seeds",
        df=df or None,
    )  # fmt: skip


def _example_se(contrasts: Sequence[PairContrast], n_boot: int, seed: int) -> float:
    """SE of the mean seed-averaged contrast from test-example noise (these pairs' outcomes)."""
    universes: dict[str, dict[str, int]] = {}
    indexed = []
    for c in contrasts:
        u = universes.setdefault(c.dataset, {})
        runs = c.outcome_runs()
        indexed.append([(a, _index(a, u), b, _index(b, u)) for a, b in runs])
    linear = all(o.counts is None for runs in indexed for r in runs for o in (r[0], r[2]))
    if linear:
        return _linear_se(contrasts, indexed, universes)
    return _bootstrap_se(contrasts, indexed, universes, n_boot, seed)


def _linear_se(contrasts, indexed, universes) -> float:
    """For a mean metric the example-level bootstrap's SE is known in closed form: the
    estimate is sum_d mean_i u[d, i] with u[d, i] = (1/P) sum over d's pairs of the example's
    seed-averaged difference, so its variance is sum_d var_i(u[d]) / n_d."""
    u = {d: np.zeros(len(x)) for d, x in universes.items()}
    for c, runs in zip(contrasts, indexed, strict=True):
        diff = np.zeros(len(universes[c.dataset]))
        for a, ia, b, ib in runs:
            diff[ia] += a.values
            diff[ib] -= b.values
        u[c.dataset] += diff / len(runs) / len(contrasts)
    return float(np.sqrt(sum(np.var(x, ddof=1) / len(x) for x in u.values() if len(x) > 1)))


def _bootstrap_se(contrasts, indexed, universes, n_boot: int, seed: int) -> float:
    """Poisson-weight bootstrap over test examples (one draw per dataset), for metrics that
    are not means of per-example values (corpus F1 from summed counts)."""
    rng = np.random.default_rng(seed)
    weights = {d: rng.poisson(1.0, (n_boot, len(u))).astype(float) for d, u in universes.items()}
    total = np.zeros(n_boot)
    for c, runs in zip(contrasts, indexed, strict=True):
        w = weights[c.dataset]
        diffs = [a.metric(w[:, ia]) - b.metric(w[:, ib]) for a, ia, b, ib in runs]
        total += np.mean(diffs, axis=0) / len(contrasts)
    return float(total.std(ddof=1))


def _mcnemar_ok(c: PairContrast) -> bool:
    runs = c.outcome_runs()
    if len(runs) != 1:
        return False
    binary = [o.values for o in runs[0] if o.values is not None and o.counts is None]
    return len(binary) == 2 and all(np.isin(v, (0.0, 1.0)).all() for v in binary)


def _mcnemar(c: PairContrast) -> Test:
    """Exact McNemar: among examples the two runs disagree on, is `a` right as often as `b`?"""
    a, b = c.outcome_runs()[0]
    right_b = dict(zip(b.ids, b.values, strict=True))
    common = [(x, right_b[i]) for i, x in zip(a.ids, a.values, strict=True) if i in right_b]
    ya, yb = np.asarray(common).T
    only_a, only_b = int(((ya == 1) & (yb == 0)).sum()), int(((ya == 0) & (yb == 1)).sum())
    n = len(ya)
    estimate = (only_a - only_b) / n
    p = float(stats.binomtest(only_a, only_a + only_b).pvalue) if only_a + only_b else 1.0
    d = ya - yb
    se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    z = stats.norm.ppf(1 - ALPHA / 2)
    lo, hi = estimate - z * se, estimate + z * se
    return Test(estimate, lo, hi, p, se, mde_from_se(se), 1, "examples")


def interval_of_max(tests: Sequence[Test]) -> tuple[float, float] | None:
    """95% interval for the LARGEST of the true values the `tests` estimate (one per pair).

    The largest point estimate is biased upward and the pair it picks is chosen by the noise (a
    winner's curse), so its own interval does not cover. Instead every test's interval is
    widened to level 1 - alpha/k (Bonferroni, k tests): with probability >= 1 - alpha all of
    them cover at once, and then [max of lows, max of highs] holds the largest true value.
    Conservative (coverage near 1 - alpha/k when one pair dominates). None when a test has no
    interval."""
    k = len(tests)
    if not k:
        return None
    lows, highs = [], []
    for t in tests:
        if t.level == "identical" or (t.se == 0 and t.lo is not None):
            lows.append(t.estimate)
            highs.append(t.estimate)
            continue
        if t.lo is None or t.se is None:
            return None
        dist = stats.t(t.df) if t.df else stats.norm
        q = float(dist.ppf(1 - ALPHA / (2 * k)))
        lows.append(t.estimate - q * t.se)
        highs.append(t.estimate + q * t.se)
    return max(lows), max(highs)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (statsmodels) over the p-values present."""
    from statsmodels.stats.multitest import multipletests

    idx = [i for i, p in enumerate(p_values) if p is not None and np.isfinite(p)]
    out: list[float | None] = [None] * len(p_values)
    if idx:
        adj = multipletests([p_values[i] for i in idx], alpha=ALPHA, method="holm")[1]
        for i, p in zip(idx, adj, strict=True):
            out[i] = float(p)
    return out


def compare_cells(contrasts: Sequence[PairContrast], n_boot: int = 1000, seed: int = 0) -> Test:
    """Across pairs when there are enough of them, else within pairs (test-example noise)."""
    if len(contrasts) >= MIN_PAIRS:
        if all(c.identical for c in contrasts):
            return Test(0.0, 0.0, 0.0, 1.0, 0.0, 0.0, len(contrasts), "identical")
        return across_pairs([c.mean for c in contrasts])
    return within_pairs(contrasts, n_boot, seed)


def seed_std(values: dict[int, float]) -> float | None:
    """Sample std over seeds (None below two seeds)."""
    v = list(values.values())
    return float(np.std(v, ddof=1)) if len(v) > 1 else None
