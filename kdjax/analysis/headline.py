"""The report's opening paragraphs: the key findings in numbers."""

from __future__ import annotations

from kdjax.analysis.configs import AXIS_NAMES, fmt_value
from kdjax.analysis.effects import Effects, OptionEffect
from kdjax.analysis.gaps import Gaps, pair_name


def pts(x: float | None) -> str:
    """A fraction as points (x 100)."""
    return "-" if x is None else f"{x * 100:.2f}"


def pm(mean: float | None, std: float | None) -> str:
    return pts(mean) if std is None else f"{pts(mean)} ± {pts(std)}"


def nof(k: int, one: str, many: str | None = None) -> str:
    """`1 failed run`, `3 failed runs`."""
    return f"{k} {one if k == 1 else (many or one + 's')}"


def costly(e: Effects) -> OptionEffect | None:
    """The non-best option with the highest mean regret, over every swept axis."""
    wrong = [
        o
        for eff in e.axes.values()
        for o in eff.options
        if o.n_pairs and o.option != eff.best_option
    ]
    return max(wrong, key=lambda o: o.mean_regret) if wrong else None


def headline(e: Effects, g: Gaps) -> list[str]:
    """Paragraphs: scope, best single configuration, costliest choice, KD gain, per axis."""
    s = e.study
    n, total = len(e.active), len(s.pairs)
    datasets = len({p[0] for p in s.pairs})
    students = len({p[1] for p in s.pairs})
    kd_configs = sum(1 for c in s.configs if not c.is_baseline)
    swept = ", ".join(AXIS_NAMES.get(a, a) for a in s.swept) or "no axis"
    out = [
        f"This study covers {nof(total, 'dataset–student pair')} ({nof(datasets, 'dataset')} × "
        f"{nof(students, 'student')}), {nof(kd_configs, 'KD configuration')} over {swept}, and "
        f"{nof(len(s.seeds), 'seed')}; "
        f"{g.count('done')} of {len(s.rows)} runs finished and {n} pairs have results. All "
        "scores are test metrics in points (×100); every choice is made on validation."
    ]
    if not n:
        out.append(
            "**No finished distillation or baseline run yet:** there is nothing to "
            "compare; see Gaps and caveats."
        )
        return out
    best = e.best_single
    if best is not None:
        scope = (
            f"among the {len(e.ranking)} configurations run on all {n} pairs"
            if e.ranking_complete
            else f"provisionally, among the {len(e.ranking)} configurations run on "
            f"{e.ranking_coverage} of {n} pairs"
        )
        out.append(
            f"**Best single configuration:** `{best.config.label()}` ({scope}). Against each "
            f"pair's own validation-chosen best it loses {pm(best.mean_regret, best.regret_std)} "
            f"points on average and {pts(best.worst_regret)} points in the worst case "
            f"({pair_name(best.worst_pair)})."
        )
    worst = costly(e)
    if worst is not None:
        top = max(
            (o for eff in e.axes.values() for o in eff.options if o.n_pairs),
            key=lambda o: o.worst_regret,
        )
        out.append(
            f"**Most costly wrong choice:** {AXIS_NAMES.get(worst.axis, worst.axis)} = "
            f"{fmt_value(worst.option)}, with a mean regret of "
            f"{pm(worst.mean_regret, worst.regret_std)} points and {pts(worst.worst_regret)} in "
            f"the worst case ({pair_name(worst.worst_pair)}). Across all parameters a single "
            f"choice costs up to {pts(top.worst_regret)} points "
            f"({AXIS_NAMES.get(top.axis, top.axis)} = {fmt_value(top.option)} on "
            f"{pair_name(top.worst_pair)})."
        )
    gains = {p: r.gain for p, r in e.pairs.items() if r.gain is not None}
    if gains:
        lo, hi = min(gains, key=gains.get), max(gains, key=gains.get)
        mean = sum(gains.values()) / len(gains)
        wins = sum(1 for v in gains.values() if v > 0)
        out.append(
            f"**KD gain:** the pair's best KD configuration beats no KD by {pts(gains[lo])} "
            f"({pair_name(lo)}) to {pts(gains[hi])} ({pair_name(hi)}) points, "
            f"{pts(mean)} on average; KD helps on {wins} of {len(gains)} pairs."
        )
    parts = []
    for axis, eff in e.axes.items():
        if eff.best_option is None:
            continue
        short = {"teacher_checkpoint": "teacher"}.get(axis, axis)
        vs = []
        for c in eff.comparisons:
            ci = f"95% CI [{pts(c.lo)}, {pts(c.hi)}]" if c.lo is not None else "one unit"
            word = {True: "within noise", False: "significant", None: "too few runs"}
            vs.append(
                f"{short}={fmt_value(c.b)} is {pts(c.diff)} lower ({word[c.within_noise]}, {ci})"
            )
        ref = eff.option(eff.best_option)
        few = f" (run on only {ref.n_pairs} of {n} pairs)" if ref.n_pairs < n else ""
        parts.append(
            f"{AXIS_NAMES.get(axis, axis)}: best {short}={fmt_value(eff.best_option)}{few}"
            + (f"; {', '.join(vs)}" if vs else "")
        )
    if parts:
        out.append(
            "**Per parameter** (best option = lowest mean regret; differences are mean test "
            "points over (pair, seed) units, with paired bootstrap intervals): "
            + ". ".join(parts)
            + "."
        )
    if not g.complete:
        missing = [
            nof(g.count("failed"), "failed run"),
            nof(g.count("pending") + g.count("running"), "unfinished run"),
            nof(len(g.no_results), "pair without results", "pairs without results"),
            nof(len(g.no_baseline), "pair without a baseline", "pairs without a baseline"),
            nof(len(g.no_teacher), "dataset without a teacher score", "datasets without one"),
            nof(len(g.partial_configs), "configuration not run on every pair",
                "configurations not run on every pair"),
        ]  # fmt: skip
        what = ", ".join(m for m in missing if not m.startswith("0 "))
        if g.greedy and what == missing[-1]:  # only the coverage the greedy search skips
            k = nof(len(g.partial_configs), "configuration")
            out.append(
                f"**Coverage:** by design, the greedy search ran {k} on some pairs only; option "
                "effects use the configurations it visited on each pair."
            )
            return out
        out.append(
            f"**This ledger is incomplete:** {what}. 'Gaps and caveats' lists what is missing "
            "and which conclusions it weakens."
        )
    return out
