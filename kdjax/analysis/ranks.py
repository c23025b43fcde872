"""Ranks across pairs: the Friedman test over pairs (blocks) and options or configurations
(treatments), and the Nemenyi post-hoc p-values a critical-difference diagram draws."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kdjax.analysis.configs import fmt_value
from kdjax.analysis.stats import MIN_PAIRS


@dataclass
class Ranking:
    """Average rank per treatment (1 = best test score) over the pairs that ran them all."""

    title: str
    scores: Any  # pandas DataFrame [pair, treatment]: test score in points
    friedman_p: float | None  # Friedman (3+ treatments) or the sign test (2)
    posthoc: Any | None  # pandas DataFrame of Nemenyi p-values, when >= MIN_PAIRS pairs

    @property
    def ranks(self) -> Any:
        return self.scores.rank(axis=1, ascending=False).mean(axis=0).sort_values()

    @property
    def n_pairs(self) -> int:
        return len(self.scores)


def ranking(title: str, table: dict[str, dict[str, float]]) -> Ranking | None:
    """`table`: pair -> treatment -> test score; only pairs with every treatment count."""
    import pandas as pd
    from scipy import stats

    df = pd.DataFrame.from_dict(table, orient="index").dropna(axis=0, how="any")
    if df.shape[1] < 2 or df.shape[0] < 2:
        return None
    p = None
    if df.shape[1] >= 3 and not (df.nunique(axis=1) == 1).all():
        p = float(stats.friedmanchisquare(*[df[c].to_numpy() for c in df.columns]).pvalue)
    elif df.shape[1] == 2:  # two treatments: the exact sign test over pairs (ties dropped)
        a, b = df.iloc[:, 0].to_numpy(), df.iloc[:, 1].to_numpy()
        wins, n = int((a > b).sum()), int((a != b).sum())
        p = float(stats.binomtest(wins, n).pvalue) if n else None
    posthoc = None
    if df.shape[0] >= MIN_PAIRS and df.shape[1] >= 3:
        import scikit_posthocs as sp

        posthoc = sp.posthoc_nemenyi_friedman(df.to_numpy())
        posthoc.index = posthoc.columns = df.columns
    return Ranking(title, df, p, posthoc)


def axis_rankings(results: Any) -> list[Ranking]:
    """One ranking per swept axis (options inside each pair's contrast group), and one of the
    configurations run on every pair."""
    out = []
    for axis, eff in results.axes.items():
        table: dict[str, dict[str, float]] = {}
        for pair, gs in eff.groups.items():
            cells = results.study.cells[pair]
            scores: dict[str, list[float]] = {}
            for g in gs:
                for o, c in g.members.items():
                    scores.setdefault(fmt_value(o), []).append(cells[c].test_mean * 100)
            table[f"{pair[0]}/{pair[1]}"] = {o: sum(v) / len(v) for o, v in scores.items()}
        r = ranking(axis, table)
        if r is not None:
            out.append(r)
    configs: dict[str, dict[str, float]] = {}
    from kdjax.analysis.recommend import universal

    among = universal(results.study, results.active)
    for pair in results.active:
        cells = results.study.candidates(pair)
        swept = results.study.swept or None
        configs[f"{pair[0]}/{pair[1]}"] = {c.label(swept): cells[c].test_mean * 100 for c in among}
    r = ranking("configurations run on every pair", configs) if len(among) >= 2 else None
    if r is not None:
        out.append(r)
    return out


def friedman_text(r: Ranking) -> str:
    test = "Sign test" if r.scores.shape[1] == 2 else "Friedman test"
    if r.friedman_p is None:
        return f"{test}: every pair ties; nothing to test."
    few = "" if r.n_pairs >= MIN_PAIRS else f" (only {r.n_pairs} pairs: no cross-pair claim)"
    return f"{test} over {r.n_pairs} pairs: p = {r.friedman_p:.3g}{few}."
