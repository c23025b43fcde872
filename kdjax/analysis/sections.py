"""The report's text: a headline, then one section per question, with tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdjax.analysis.breakdowns import effects_by
from kdjax.analysis.configs import AXIS_NAMES, fmt_value
from kdjax.analysis.gaps import Gaps, pair_name
from kdjax.analysis.headline import ci, headline, nof, pm, pt, pts
from kdjax.analysis.ranks import Ranking, friedman_text
from kdjax.analysis.render import Doc
from kdjax.analysis.results import Results
from kdjax.analysis.stats import MIN_PAIRS, PairContrast, holm, seed_std, within_pairs


def _study(doc: Doc, r: Results, g: Gaps) -> None:
    s = r.study
    doc.h(1, "Study and completeness")
    datasets = sorted({p[0] for p in s.pairs})
    students = sorted({p[1] for p in s.pairs})
    doc.p(
        f"{nof(len(s.pairs), 'dataset–student pair')} ({nof(len(datasets), 'dataset')}: "
        f"{', '.join(datasets)}; {nof(len(students), 'student')}: {', '.join(students)}); seeds: "
        f"{', '.join(map(str, s.seeds)) or 'none finished'}; search: {s.strategy}."
    )
    statuses = ("done", "failed", "pending", "running")
    kinds = ("teacher", "distill", "baseline")
    rows = [[k, *(g.counts.get((k, st), 0) for st in statuses)] for k in kinds]
    rows.append(["all", *(g.count(st) for st in statuses)])
    doc.table(["runs", *statuses], rows)
    doc.table(
        ["axis", "options (default first)", "swept"],
        [
            [AXIS_NAMES.get(a, a), ", ".join(fmt_value(v) for v in opts), "yes" * (len(opts) > 1)]
            for a, opts in s.axes.items()
        ],
    )


def _gain(doc: Doc, r: Results, figs: dict[str, Path]) -> None:
    doc.h(1, "Teachers, no-KD baselines and KD gain")
    doc.p(
        "Teacher: test score of its highest-validation-score (hs) checkpoint. Default KD: every "
        "axis at its first option, against the no-KD baseline trained with the same learning "
        "rate. Best KD: the pair's validation-best KD configuration, against the pair's "
        "validation-best no-KD baseline over the learning rates the study ran (the same tuning "
        "budget for both). Intervals: 95%, these pairs only: Student-t over the seeds' paired "
        "contrasts (seed variance pooled over the column's pairs) with two or more seeds, "
        "else paired over test examples (seed noise not included); p-values Holm-adjusted "
        "over each column. '±': std over seeds."
    )
    ps = holm([g.default_test.p if g.default_test else None for g in r.gains])
    pb = holm([g.best_test.p if g.best_test else None for g in r.gains])
    rows = []
    for g, p1, p2 in zip(r.gains, ps, pb, strict=True):
        t = r.study.teachers.get(g.pair[0])
        base = r.study.baseline(g.pair)
        rows.append(
            [
                pair_name(g.pair),
                r.study.metric.get(g.pair[0], "-"),
                pts(t.test if t else None),
                pm(base.test_mean, base.test_std) if base else "-",
                pts(g.default.mean) if g.default else "-",
                ci(g.default_test),
                g.default_test.verdict(p1) if g.default_test else "-",
                "-" if g.baseline_lr is None else f"{g.baseline_lr:g}",
                pts(g.best.mean) if g.best else "-",
                ci(g.best_test),
                g.best_test.verdict(p2) if g.best_test else "-",
            ]
        )
    doc.table(
        [
            "pair", "metric", "teacher test", "no-KD test (± std over seeds)",
            "default KD - no KD", "95% CI", "verdict", "tuned no-KD lr",
            "best KD - tuned no KD", "95% CI", "verdict",
        ],
        rows,
    )  # fmt: skip
    doc.img(figs.get("gain"), "KD against no KD per pair (test points, 95% intervals).")


def _best_per_pair(doc: Doc, r: Results) -> None:
    doc.h(1, "Best configuration per pair")
    doc.p("Chosen on mean validation score over seeds; reported on test ('±': std over seeds).")
    rows = []
    for p in r.study.pairs:
        cells = r.study.candidates(p)
        best = r.study.best(p)
        if best is None:
            rows.append([pair_name(p), "(no finished configuration)", "0", "-", "-"])
            continue
        c = cells[best]
        test = pm(c.test_mean, c.test_std)
        rows.append([pair_name(p), best.label(), str(len(cells)), pts(c.val_mean), test])
    doc.table(["pair", "best configuration", "configs", "val", "test"], rows)


def _effects(doc: Doc, r: Results, figs: dict[str, Path]) -> None:
    doc.h(1, "Effect of each parameter")
    if not any(len(e.options) > 1 for e in r.axes.values()):
        doc.p(
            "No axis was swept (every knob has one option), so there are no per-parameter "
            "effects; this study's comparison is the KD gain above."
        )
        return
    doc.p(
        "An option's effect is its test score minus the axis's best option's, with every other "
        "knob the same (runs that differ in this axis only: under a grid every setting of the "
        "other knobs, averaged; under greedy the sensitivity stage around the optimum, else the "
        "stage that varied the axis), paired by seed, averaged over seeds and then over pairs. "
        "The best option is chosen on validation; 0 for it, negative for worse options. "
        + (
            f"Intervals and p-values: Student-t over the {len(r.active)} pairs' contrasts (a "
            "claim about pairs like these), p Holm-adjusted over the whole table. "
            if r.cross_pair
            else f"With fewer than {MIN_PAIRS} pairs no cross-pair claim is made: intervals "
            "and p-values are for these pairs only, p Holm-adjusted over the whole table; "
            + (
                "Student-t over the seeds' paired contrasts, the seed-to-seed variance pooled "
                "over pairs (seed and test-example noise). "
                if len(r.study.seeds) > 1
                else "from test-example noise (paired over test examples; one seed: "
                "seed-to-seed variation is not included). "
            )
        )
        + "MDE: the smallest true difference detected with 80% power at alpha 0.05."
    )
    df = r.effects()
    rows = []
    for (axis, eff), (_, row) in zip(
        [(a, e) for a, e in r.axes.items() for _ in e.options], df.iterrows(), strict=True
    ):
        src = ", ".join(f"{k} {v}" for k, v in eff.sources().items())
        lo, hi = row.ci_low, row.ci_high
        rows.append(
            [
                AXIS_NAMES.get(axis, axis),
                row.option,
                pt(row.effect) if row.effect == row.effect else "-",
                f"[{pt(lo)}, {pt(hi)}]" if lo == lo and lo is not None else "-",
                f"{row.p_value:.3g}" if row.p_value == row.p_value else "-",
                row.verdict,
                str(row.n_pairs),
                src,
            ]
        )
    doc.table(
        ["axis", "option", "effect", "95% CI", "p (Holm)", "verdict", "pairs", "contrasts from"],
        rows,
    )
    doc.img(figs.get("forest"), "Effects with 95% intervals per axis (test points).")
    for axis, eff in r.axes.items():
        others = [o for o in eff.options if not o.is_best and o.n_pairs]
        if not others:
            continue
        doc.h(2, f"{AXIS_NAMES.get(axis, axis)}: per pair")
        doc.p(
            "Each pair's contrast (test points) with its 95% interval (this pair only): "
            "Student-t over its seeds' contrasts, the seed-to-seed variance pooled over the "
            "option's pairs, with two or more seeds; else from test-example noise where "
            "per-example outcomes were kept (seed noise not included)."
        )
        rows = []
        for pair, gs in eff.groups.items():
            cells = [_pair_cell(o.contrasts.get(pair), list(o.contrasts.values())) for o in others]
            around = gs[0].center.label() if len(gs) == 1 else f"{len(gs)} settings"
            rows.append([pair_name(pair), gs[0].source, around, *cells])
        head = [f"{fmt_value(o.option)} - {fmt_value(eff.best)}" for o in others]
        doc.table(["pair", "contrasts from", "around", *head], rows)


def _pair_cell(c: PairContrast | None, pool: list[PairContrast]) -> str:
    """A pair's contrast and its interval, the seed variance pooled over the option's pairs."""
    if c is None:
        return "-"
    t = within_pairs([c], pool=pool)
    if t.level not in ("examples", "seeds") or t.lo is None:
        return pt(c.mean * 100)
    return f"{c.mean * 100:.2f} [{t.lo * 100:.2f}, {t.hi * 100:.2f}]"


def _ranks(doc: Doc, rankings: list[Ranking], figs: dict[str, Path]) -> None:
    if not rankings:
        return
    doc.h(1, "Ranks across pairs")
    doc.p(
        "Within each pair the options (inside the pair's contrast group) or the configurations "
        "run on every pair are ranked by test score (1 = best); average ranks over pairs, the "
        "Friedman test of 'all ranks equal', and a critical-difference diagram (Nemenyi "
        f"post-hoc, scikit-posthocs) when there are at least {MIN_PAIRS} pairs."
    )
    for rk in rankings:
        doc.h(2, AXIS_NAMES.get(rk.title, rk.title))
        doc.table(
            ["treatment", "average rank"], [[str(i), f"{v:.2f}"] for i, v in rk.ranks.items()]
        )
        doc.p(friedman_text(rk))
        doc.img(figs.get(f"cd:{rk.title}"), f"Critical-difference diagram: {rk.title}.")


def _breakdowns(doc: Doc, r: Results) -> None:
    tables = [("task family", effects_by(r, "task")), ("student", effects_by(r, "student"))]
    if all(t is None for _, t in tables):
        return
    doc.h(1, "Breakdowns")
    doc.p(
        "Each option's mean contrast to the axis's best option (test points) over the pairs of "
        "each task family and each student, with the number of pairs in brackets; descriptive "
        "only (too few pairs per cell for tests)."
    )
    for name, t in tables:
        if t is None:
            continue
        doc.h(2, f"by {name}")
        rows = [[AXIS_NAMES.get(a, a), fmt_value(o), *t.loc[(a, o)].tolist()] for a, o in t.index]
        doc.table(["axis", "option", *map(str, t.columns)], rows)


def _single(doc: Doc, r: Results, figs: dict[str, Path]) -> None:
    doc.h(1, "One configuration for every pair")
    rec = r.recommendation
    if rec.get("config") is None:
        doc.p(f"No recommendation: {rec.get('reason', 'nothing finished')}.")
        return
    if rec["n_candidates"] == 1:
        doc.p(
            f"One KD configuration was run (`{rec['label']}`): there is nothing to choose "
            "between, and its regret is 0 by construction."
        )
        return
    lo, hi = rec["mean_regret_interval"]
    wlo, whi = rec["worst_regret_interval"]
    doc.p(
        f"Chosen on validation (smallest mean validation regret) among the "
        f"{rec['n_candidates']} configurations run on all {rec['n_pairs']} pairs: "
        f"`{rec['label']}`. Test regret against each pair's own validation-chosen best "
        f"({rec['regret_method']}): mean "
        f"{pt(rec['mean_regret'])} ({rec['mean_regret_interval_kind']}: [{pt(lo)}, {pt(hi)}]), "
        f"worst (largest per-pair estimate) {pt(rec['worst_regret'])} on {rec['worst_pair']} "
        f"({rec['worst_regret_interval_kind']}: [{pt(wlo)}, {pt(whi)}])."
    )
    lodo = rec.get("leave_one_dataset_out") or []
    if lodo:
        doc.p(
            "Leave one dataset out: the configuration chosen on validation without dataset d, "
            "and its test regret on d's pairs."
        )
        doc.table(
            ["left out", "chosen without it", "regret on it"],
            [[x["dataset"], _label(x["config"]), pt(x["regret"])] for x in lodo],
        )
    ref = rec.get("reference") or {}
    if ref.get("run_everywhere"):
        dlo, dhi = ref["difference_interval"]
        doc.p(
            f"Reference study's recommendation, `{_label(ref['config'])}` ({ref['source']}): "
            f"mean regret {pt(ref['mean_regret'])}, worst {pt(ref['worst_regret'])}; "
            f"recommended minus reference {pt(ref['difference'])} [{pt(dlo)}, {pt(dhi)}]: "
            f"{ref['verdict']}."
        )
    elif ref:
        doc.p(f"Reference study's recommendation `{_label(ref['config'])}`: {ref['reason']}.")
    doc.img(
        figs.get("heatmap"), "Test score minus each pair's best, configurations run everywhere."
    )


def _label(cfg: dict[str, Any]) -> str:
    return " ".join(f"{k}={fmt_value(v)}" for k, v in cfg.items() if v is not None)


def _diagnostics(doc: Doc, r: Results, figs: dict[str, Path]) -> None:
    if not any(r.diagnostics.values()):
        return
    doc.h(1, "Diagnostics")
    doc.p(
        "On test: student–teacher argmax agreement, KL(teacher‖student) at T=1 and expected "
        "calibration error, averaged over each pair's runs with the option, then over pairs."
    )
    keys = ("agreement_dist", "kl_t1", "ece")
    for axis, by in r.diagnostics.items():
        doc.h(2, f"by {AXIS_NAMES.get(axis, axis)}")
        rows = [
            [
                fmt_value(o),
                *(f"{v[k][0]:.4f}" if k in v else "-" for k in keys),
                str(max((x[1] for x in v.values()), default=0)),
            ]
            for o, v in by.items()
        ]
        doc.table(["option", "agreement", "KL (T=1)", "ECE", "pairs"], rows)
    doc.img(figs.get("diagnostics"), "Agreement, KL at T=1 and ECE by distance and temperature.")


def _degenerate(doc: Doc, r: Results) -> None:
    if not r.stuck and not r.equivalences:
        return
    doc.h(1, "Degenerate and equivalent options")
    items = [f"{pair_name(p)}: {why}; left out of every mean." for p, why in r.stuck.items()]
    doc.items(items + r.equivalences)
    for pair in r.stuck:
        cells = r.study.cells.get(pair, {})
        doc.table(
            ["configuration", "test (mean ± std over seeds)"],
            [[c.label(), pm(x.test_mean, seed_std(x.test))] for c, x in cells.items()],
        )


def _gaps(doc: Doc, r: Results, g: Gaps) -> None:
    doc.h(1, "Gaps and caveats")
    if g.complete:
        doc.p("Nothing is missing: every run finished and every pair has a teacher and a baseline.")
    doc.items(g.notes)
    if g.failed:
        doc.h(2, f"Failed runs ({len(g.failed)})")
        doc.table(
            ["run", "kind", "pair", "configuration", "error"],
            [[f["run_id"], f["kind"], f["pair"], f["config"], f["error"]] for f in g.failed[:40]],
        )
    if g.unfinished:
        doc.h(2, f"Unfinished runs ({g.count('pending') + g.count('running')})")
        doc.table(["pair or dataset", "kind", "pending", "running"], g.unfinished)


def _files(doc: Doc, figs: dict[str, Path]) -> None:
    doc.h(1, "Files")
    doc.items(
        [
            "`effects.csv`: one row per (axis, option): axis, option, effect, ci_low, ci_high, "
            "p_value (Holm), verdict, n_pairs; effect and interval in test points.",
            "`recommendation.json`: the single configuration, its mean and worst regret with "
            "intervals, leave-one-dataset-out regrets and the reference comparison.",
            "`runs.csv`, `runs.parquet`: the ledger, one row per run (config and results as JSON).",
            "`configs.csv`: per (pair, configuration): mean and std over seeds of validation and "
            "test, and the number of seeds.",
            *(f"`{p.name}`" for p in figs.values()),
        ]
    )


def build(r: Results, g: Gaps, figs: dict[str, Path], rankings: list[Ranking], title: str) -> Doc:
    """The whole report as a document."""
    doc = Doc(title)
    for para in headline(r, g):
        doc.p(para)
    _study(doc, r, g)
    _gain(doc, r, figs)
    _best_per_pair(doc, r)
    _effects(doc, r, figs)
    _ranks(doc, rankings, figs)
    _single(doc, r, figs)
    _breakdowns(doc, r)
    _diagnostics(doc, r, figs)
    _degenerate(doc, r)
    _gaps(doc, r, g)
    _files(doc, figs)
    return doc
