"""The report's text: a headline paragraph, then one section per question, with tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdjax.analysis.configs import AXIS_NAMES, fmt_value
from kdjax.analysis.effects import Effects, OptionEffect, Scored
from kdjax.analysis.gaps import Gaps, pair_name
from kdjax.analysis.headline import headline, nof, pm, pts
from kdjax.analysis.render import Doc


def worst_name(s: Scored) -> str:
    """The pair where a choice loses most; none when it loses nowhere."""
    return pair_name(s.worst_pair) if (s.worst_regret or 0.0) > 0 else "-"


def _option_rows(eff: Any, n: int) -> list[list[str]]:
    cmp = {c.b: c for c in eff.comparisons}
    rows = []
    for o in eff.options:
        o: OptionEffect
        tags = [
            t for t, v in (("best", eff.best_option), ("default", eff.default)) if o.option == v
        ]
        mark = f" ({', '.join(tags)})" if tags else ""
        c = cmp.get(o.option)
        ci = f"[{pts(c.lo)}, {pts(c.hi)}]" if c and c.lo is not None else "-"
        rows.append(
            [
                f"{fmt_value(o.option)}{mark}",
                f"{o.n_pairs}/{n}",
                pts(o.mean_score),
                pm(o.mean_regret, o.regret_std),
                pts(o.worst_regret),
                worst_name(o),
                pts(c.diff) if c else "-",
                ci,
                c.verdict if c else "-",
            ]
        )
    return rows


def _study(doc: Doc, e: Effects, g: Gaps) -> None:
    s = e.study
    doc.h(1, "Study and completeness")
    datasets = sorted({p[0] for p in s.pairs})
    students = sorted({p[1] for p in s.pairs})
    doc.p(
        f"{nof(len(s.pairs), 'dataset–student pair')} ({nof(len(datasets), 'dataset')}: "
        f"{', '.join(datasets)}; {nof(len(students), 'student')}: {', '.join(students)}); seeds: "
        f"{', '.join(map(str, s.seeds)) or 'none finished'}."
    )
    kinds = ("teacher", "distill", "baseline")
    statuses = ("done", "failed", "pending", "running")
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


def _pairs(doc: Doc, e: Effects, figs: dict[str, Path]) -> None:
    doc.h(1, "Teachers, no-KD baselines and KD gain")
    doc.p(
        "Teacher: test score of its highest-validation-score (hs) checkpoint. KD gain: test score "
        "of the pair's validation-best KD configuration minus the no-KD baseline (alpha 0)."
    )
    rows = []
    for p, r in e.pairs.items():
        b, best = r.baseline, r.best_cell
        rows.append(
            [
                pair_name(p),
                r.metric or "-",
                pts(r.teacher.test if r.teacher else None),
                pm(b.val_mean, b.val_std) if b else "-",
                pm(b.test_mean, b.test_std) if b else "-",
                pm(best.test_mean, best.test_std) if best else "-",
                pm(r.gain, _std(r.gain_seeds)) if r.gain is not None else "-",
            ]
        )
    doc.table(
        ["pair", "metric", "teacher test", "no-KD val", "no-KD test", "best KD test", "KD gain"],
        rows,
    )
    doc.img(figs.get("gain"), "KD gain over the no-KD baseline per pair (test, points).")
    doc.h(1, "Best configuration per pair")
    doc.p(
        "Chosen on mean validation score over seeds; reported on test. Default: every axis at "
        "its default option. Worst: the configuration with the lowest validation score."
    )
    rows = []
    for p, r in e.pairs.items():
        if r.best is None:
            rows.append([pair_name(p), "(no finished configuration)", "0", *["-"] * 6])
            continue
        rows.append(
            [
                pair_name(p),
                r.best.label(),
                str(r.n_configs),
                pts(r.best_cell.val_mean),
                pm(r.best_cell.test_mean, r.best_cell.test_std),
                pts(r.default_cell.test_mean) if r.default_cell else "-",
                pts(r.best_minus_default),
                pts(r.worst_cell.test_mean) if r.worst_cell else "-",
                pts(r.best_minus_worst),
            ]
        )
    doc.table(
        [
            "pair",
            "best configuration",
            "configs",
            "val",
            "test",
            "default test",
            "best - default",
            "worst test",
            "best - worst",
        ],
        rows,
    )


def _std(seeds: dict[int, float]) -> float | None:
    import numpy as np

    v = list(seeds.values())
    return float(np.std(v, ddof=1)) if len(v) > 1 else None


def _parameters(doc: Doc, e: Effects, g: Gaps, figs: dict[str, Path]) -> None:
    doc.h(1, "Effect of each parameter")
    doc.p(
        "For each option: per pair, the validation-best configuration having that option (the "
        "other axes at their best), its test score, and the regret = the pair's best test score "
        "minus it; mean and worst over pairs. '±' is the spread over seeds. The last columns "
        "compare the best option with each other option: mean test difference over (pair, seed) "
        "units and a 95% paired bootstrap interval."
    )
    if not e.axes:
        doc.p("No axis has more than one option in this ledger: there is nothing to compare.")
    n = len(e.active)
    for axis, eff in e.axes.items():
        doc.h(2, AXIS_NAMES.get(axis, axis))
        doc.table(
            [
                "option",
                "pairs",
                "mean score",
                "mean regret",
                "worst regret",
                "worst pair",
                "best - option",
                "95% CI",
                "verdict",
            ],
            _option_rows(eff, n),
        )
        rows = [
            [
                pair_name(p),
                fmt_value(v["best_option"]),
                fmt_value(v["worst_option"]),
                pts(v["best_minus_worst"]),
                pts(v["best_minus_default"]),
            ]
            for p, v in eff.per_pair.items()
        ]
        doc.table(["pair", "best option", "worst option", "best - worst", "best - default"], rows)
        for note in g.notes:
            if note.startswith(AXIS_NAMES.get(axis, axis) + ":"):
                doc.note(note)
    doc.img(figs.get("regret"), "Regret per option: mean over pairs (bars) and worst pair (▼).")


def _single(doc: Doc, e: Effects, figs: dict[str, Path], top: int = 15) -> None:
    doc.h(1, "One configuration for every pair")
    n = len(e.active)
    best = e.best_single
    if best is None:
        doc.p("No finished configuration: nothing to rank.")
        return
    scope = (
        f"all {n} pairs"
        if e.ranking_complete
        else f"{e.ranking_coverage} of {n} pairs (no configuration was run on every pair)"
    )
    doc.p(
        f"Ranked by mean normalised validation score (score / the pair's best validation score) "
        f"among the {len(e.ranking)} configurations run on {scope}. The winner, "
        f"`{best.config.label()}`, has a mean test regret of "
        f"{pm(best.mean_regret, best.regret_std)} points against each pair's own "
        f"validation-chosen best, worst {pts(best.worst_regret)} "
        f"on {pair_name(best.worst_pair)}."
    )
    rows = [
        [
            str(k + 1),
            r.config.label(),
            f"{r.mean_norm_val:.4f}",
            pts(r.mean_score),
            pm(r.mean_regret, r.regret_std),
            pts(r.worst_regret),
            worst_name(r),
        ]
        for k, r in enumerate(e.ranking[:top])
    ]
    doc.table(
        [
            "rank",
            "configuration",
            "mean norm. val",
            "mean test",
            "mean regret",
            "worst regret",
            "worst pair",
        ],
        rows,
    )
    if len(e.ranking) > top:
        doc.p(f"({len(e.ranking) - top} lower-ranked configurations are in configs.csv.)")
    doc.img(figs.get("heatmap"), "Test score per pair for the top configurations.")


def _temperature(doc: Doc, e: Effects, figs: dict[str, Path]) -> None:
    if not e.grid:
        return
    doc.h(1, "Temperature and distance")
    taus = sorted({t for v in e.grid.values() for t in v})
    doc.p(
        "Mean test score over pairs with distance and tau_t fixed, other axes at their best "
        "(validation-chosen); in brackets the number of pairs."
    )
    rows = [
        [str(d), *(f"{pts(v[t][0])} ({v[t][1]})" if t in v else "-" for t in taus)]
        for d, v in e.grid.items()
    ]
    doc.table(["distance", *(f"tau_t={fmt_value(t)}" for t in taus)], rows)
    doc.img(figs.get("tau"), "Score against teacher temperature, one line per distance.")


def _diagnostics(doc: Doc, e: Effects, figs: dict[str, Path]) -> None:
    if not any(e.diagnostics.values()):
        return
    doc.h(1, "Diagnostics")
    doc.p(
        "On test: student–teacher argmax agreement, KL(teacher‖student) at T=1 and expected "
        "calibration error, averaged over each pair's runs with the option, then over pairs."
    )
    keys = ("agreement_dist", "kl_t1", "ece")
    for axis, by in e.diagnostics.items():
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


def _gaps(doc: Doc, e: Effects, g: Gaps) -> None:
    doc.h(1, "Gaps and caveats")
    if g.complete:
        doc.p(
            "Nothing is missing: every run finished, every pair has a teacher score and a "
            "baseline, and every configuration ran on every pair."
        )
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
    if g.partial_configs:
        doc.h(2, f"Configurations not run on every pair ({len(g.partial_configs)})")
        rows = sorted(g.partial_configs, key=lambda x: -x[1])[:20]
        doc.table(
            ["configuration", "pairs"], [[c.label(), f"{k}/{len(e.active)}"] for c, k in rows]
        )


def _files(doc: Doc, figs: dict[str, Path]) -> None:
    doc.h(1, "Files")
    doc.items(
        [
            "`runs.csv`, `runs.parquet`: the ledger, one row per run (config and results as JSON).",
            "`configs.csv`: per (pair, configuration): mean and std of validation and test, seeds.",
            *(f"`{p.name}`" for p in figs.values()),
        ]
    )


def build(e: Effects, g: Gaps, figs: dict[str, Path], title: str) -> Doc:
    """The whole report as a document."""
    doc = Doc(title)
    for para in headline(e, g):
        doc.p(para)
    _study(doc, e, g)
    _pairs(doc, e, figs)
    _parameters(doc, e, g, figs)
    _single(doc, e, figs)
    _temperature(doc, e, figs)
    _diagnostics(doc, e, figs)
    _gaps(doc, e, g)
    _files(doc, figs)
    return doc
