"""The report's opening paragraphs: what the study can and cannot conclude, in numbers."""

from __future__ import annotations

from typing import Any

from kdjax.analysis.configs import AXIS_NAMES, fmt_value
from kdjax.analysis.gaps import Gaps, pair_name
from kdjax.analysis.results import Results
from kdjax.analysis.stats import ALPHA, MIN_PAIRS, PTS, Test, compare_cells


def pts(x: float | None) -> str:
    """A fraction as points (x 100)."""
    return "-" if x is None else f"{x * 100:.2f}"


def pt(x: float | None) -> str:
    """A value already in points."""
    return "-" if x is None else f"{x:.2f}"


def pm(mean: float | None, std: float | None) -> str:
    """`mean ± std` in points; the table or sentence says what the ± is."""
    return pts(mean) if std is None else f"{pts(mean)} ± {pts(std)}"


def ci(t: Test | None) -> str:
    if t is None or t.lo is None:
        return "-"
    return f"[{t.lo * PTS:.2f}, {t.hi * PTS:.2f}]"


def nof(k: int, one: str, many: str | None = None) -> str:
    """`1 failed run`, `3 failed runs`."""
    return f"{k} {one if k == 1 else (many or one + 's')}"


def gain_summary(r: Results) -> tuple[Test | None, Test | None]:
    """Across (or within) pairs: default KD - no KD, and best KD - tuned no KD."""
    default = [g.default for g in r.gains if g.default is not None]
    best = [g.best for g in r.gains if g.best is not None]
    return (compare_cells(default) if default else None, compare_cells(best) if best else None)


def _scope(r: Results, g: Gaps) -> str:
    s = r.study
    datasets = len({p[0] for p in s.pairs})
    students = len({p[1] for p in s.pairs})
    kd = sum(1 for c in s.configs if not c.is_baseline)
    swept = ", ".join(AXIS_NAMES.get(a, a) for a in s.swept) or "no axis"
    return (
        f"This study covers {nof(len(s.pairs), 'dataset–student pair')} "
        f"({nof(datasets, 'dataset')} × {nof(students, 'student')}), "
        f"{nof(kd, 'KD configuration')} over {swept} ({s.strategy} search), and "
        f"{nof(len(s.seeds), 'seed')}; {g.count('done')} of {len(s.rows)} runs finished and "
        f"{len(r.active)} pairs enter the means. All numbers are test scores in points (×100); "
        "every choice (each pair's best, each axis's best option, the single configuration) is "
        "made on validation."
    )


def _guard(r: Results) -> str | None:
    if r.cross_pair:
        return None
    noise = (
        "intervals from seed-to-seed and test-example noise (Student-t over the seeds' "
        "contrasts, seed variance pooled over pairs)"
        if len(r.study.seeds) > 1
        else "test-example noise only (one seed: seed-to-seed variation is not included in "
        "those intervals)"
    )
    return (
        f"**No cross-pair claim can be made:** only {len(r.active)} pair(s) have results "
        f"(fewer than {MIN_PAIRS}). Every statement below is about these pairs only, with "
        f"{noise}; whether an effect holds on other datasets or students is not something this "
        "study can tell."
    )


def _recommendation(rec: dict[str, Any]) -> str | None:
    if rec.get("config") is None or rec["n_candidates"] == 1:  # nothing was chosen
        return None
    lo, hi = rec["mean_regret_interval"]
    interval = (
        f"{rec['mean_regret_interval_kind']} [{pt(lo)}, {pt(hi)}]"
        if lo is not None
        else (rec["mean_regret_interval_kind"])
    )
    text = (
        f"**One configuration for every pair:** `{rec['label']}`, chosen on validation among "
        f"the {rec['n_candidates']} configurations run on all {rec['n_pairs']} pairs. Against "
        f"each pair's own validation-chosen best it loses {pt(rec['mean_regret'])} points on "
        f"average ({interval}); its largest per-pair loss is estimated at "
        f"{pt(rec['worst_regret'])} ({rec['worst_pair']}; the largest of several noisy "
        f"estimates, biased upward){_worst_bound(rec)}."
    )
    ref = rec.get("reference") or {}
    if ref.get("run_everywhere"):
        text += (
            f" The reference study's recommendation (ll, ce, tau_s 1) loses "
            f"{pt(ref['mean_regret'])} points on average; ours minus it: "
            f"{pt(ref['difference'])} points: {ref['verdict']}."
        )
    return text


def _worst_bound(rec: dict[str, Any]) -> str:
    hi = (rec.get("worst_regret_interval") or [None, None])[1]
    if hi is None:
        return ""
    return (
        f"; on none of these pairs does it truly lose more than {pt(hi)} points (95% confidence, "
        "Bonferroni over pairs)"
    )


def _effects(r: Results) -> str | None:
    found, none = [], []
    for axis, eff in r.axes.items():
        for o in eff.options:
            if o.is_best or o.test is None:
                continue
            name = f"{AXIS_NAMES.get(axis, axis)} = {fmt_value(o.option)}"
            p = o.p_adjusted
            if p is not None and p < ALPHA:
                found.append(f"{name}: {o.verdict}")
            elif o.test.level == "identical":
                none.append(f"{name} (identical runs)")
            elif o.test.level == "none":
                none.append(f"{name} ({o.verdict})")
            else:
                scope = "" if o.test.level == "pairs" else ", these pairs only"
                none.append(f"{name} (MDE {o.test.mde * PTS:.1f} pt{scope})")
    if not found and not none:
        return None
    best = ", ".join(
        f"{AXIS_NAMES.get(a, a)} = {fmt_value(e.best)}" for a, e in r.axes.items() if e.best
    )
    text = f"**Effects** (against each axis's best option, chosen on validation: {best}). "
    text += ("Detected: " + "; ".join(found) + ". ") if found else "No effect was detected. "
    if none:
        text += "No detectable difference: " + "; ".join(none) + "."
    return text


def _gain(r: Results) -> str | None:
    default, best = gain_summary(r)
    if default is None and best is None:
        return None
    parts = []
    if default is not None:
        parts.append(f"the default KD configuration minus no KD: {default.verdict()}")
    if best is not None:
        parts.append(
            "each pair's validation-best KD configuration minus its validation-best no-KD "
            f"baseline (learning rates tuned when the study ran several): {best.verdict()}"
        )
    return "**KD gain:** " + "; ".join(parts) + "."


def headline(r: Results, g: Gaps) -> list[str]:
    """Paragraphs: scope, the cross-pair guard, the recommendation, effects, KD gain, notes."""
    out = [_scope(r, g)]
    if not r.active:
        out.append(
            "**No finished distillation run with a moving student yet:** there is nothing to "
            "compare; see Gaps and caveats."
        )
        return out
    for para in (_guard(r), _recommendation(r.recommendation), _effects(r), _gain(r)):
        if para:
            out.append(para)
    for pair, why in r.stuck.items():
        out.append(f"**{pair_name(pair)} is reported apart:** {why}.")
    out += [f"**Equivalent options:** {n}" for n in r.equivalences]
    if not g.complete:
        out.append(
            "**This ledger is incomplete:** 'Gaps and caveats' lists what is missing and which "
            "conclusions it weakens."
        )
    return out
