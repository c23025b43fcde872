"""The report's figures, drawn with matplotlib's Agg canvas (no display, no global state).

Each function returns the PNG's path, or None when the ledger has too little for that figure.
Effects, gains and regrets are drawn in test points (x 100), as in the report's tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kdjax.analysis.configs import AXIS_NAMES, fmt_value
from kdjax.analysis.effects import OptionEffect
from kdjax.analysis.gaps import pair_name
from kdjax.analysis.ranks import Ranking
from kdjax.analysis.results import Results
from kdjax.analysis.stats import ALPHA

PTS = 100.0
DIAG = {
    "agreement_dist": "agreement with teacher",
    "kl_t1": "KL(teacher||student), T=1",
    "ece": "ECE (calibration error)",
}


def _figure(w: float, h: float) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def plot_forest(results: Results, path: Path) -> Path | None:
    """Per swept axis: each option's effect (test points against the axis's best option,
    chosen on validation) with its 95% interval; the best option at 0."""
    axes = [(a, e) for a, e in results.axes.items() if any(o.n_pairs for o in e.options)]
    if not axes:
        return None
    rows = sum(len(e.options) for _, e in axes)
    fig = _figure(7.5, 1.0 + 0.42 * rows + 0.5 * len(axes))
    subs = fig.subplots(len(axes), 1, squeeze=False, sharex=True)[:, 0]
    for ax, (axis, eff) in zip(subs, axes, strict=True):
        opts = [o for o in eff.options if o.n_pairs]
        y = np.arange(len(opts))
        for k, o in enumerate(opts):
            lo, hi = o.interval
            color = "#2b8a3e" if o.is_best else ("#c44e52" if _significant(o) else "#4c72b0")
            if lo is not None:
                ax.plot([lo, hi], [k, k], color=color, lw=2)
            ax.plot([o.effect], [k], "o", color=color)
        ax.set_yticks(y, [f"{fmt_value(o.option)}{' (best)' * o.is_best}" for o in opts])
        ax.invert_yaxis()
        ax.axvline(0, color="#888", lw=0.8)
        ax.set_ylabel({"teacher_checkpoint": "teacher"}.get(axis, axis), fontsize=9)
    subs[-1].set_xlabel("effect on test (points) vs the axis's best option; bars: 95% CI")
    fig.suptitle("Effect of each option (paired contrasts, every other knob the same)")
    return _save(fig, path)


def _significant(o: OptionEffect) -> bool:
    return o.p_adjusted is not None and o.p_adjusted < ALPHA


def plot_gain(results: Results, path: Path) -> Path | None:
    """Per pair: default KD minus the untuned baseline, and the best KD minus the tuned
    baseline (validation-chosen), on test, with 95% intervals where known."""
    rows = [g for g in results.gains if g.default_test or g.best_test]
    if not rows:
        return None
    fig = _figure(7.5, 1.4 + 0.45 * len(rows))
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    for off, attr, color, label in (
        (-0.15, "default_test", "#4c72b0", "default KD - no KD"),
        (0.15, "best_test", "#55a868", "best KD - tuned no KD"),
    ):
        for k, g in enumerate(rows):
            t = getattr(g, attr)
            if t is None:
                continue
            if t.lo is not None:
                ax.plot([t.lo * PTS, t.hi * PTS], [k + off] * 2, color=color, lw=2)
            ax.plot([t.estimate * PTS], [k + off], "o", color=color, label=label if k == 0 else "")
    ax.set_yticks(y, [pair_name(g.pair) for g in rows])
    ax.invert_yaxis()
    ax.axvline(0, color="#888", lw=0.8)
    ax.set_xlabel("KD gain on test (points); bars: 95% CI")
    ax.set_ylabel("dataset / student")
    ax.legend(fontsize=8)
    ax.set_title("KD against no KD per pair")
    return _save(fig, path)


def plot_cd(r: Ranking, path: Path) -> Path | None:
    """A critical-difference diagram (scikit-posthocs) of average ranks across pairs."""
    if r.posthoc is None:
        return None
    import scikit_posthocs as sp

    fig = Figure(figsize=(10, 1.6 + 0.3 * len(r.ranks)), dpi=100)  # labels sit outside the axes
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.32, 0.05, 0.36, 0.75))
    sp.critical_difference_diagram(r.ranks, r.posthoc, ax=ax)
    ax.set_title(f"Average rank across {r.n_pairs} pairs: {r.title} (Nemenyi, alpha 0.05)", pad=24)
    return _save(fig, path)


def plot_diagnostics(effects: Results, path: Path) -> Path | None:
    """Agreement, KL at T=1 and ECE against distance and against temperature."""
    rows = [(a, d) for a, d in effects.diagnostics.items() if d]
    keys = [k for k in DIAG if any(k in v for _, d in rows for v in d.values())]
    if not rows or not keys:
        return None
    fig = _figure(3.4 * len(keys) + 0.5, 3.2 * len(rows))
    subs = fig.subplots(len(rows), len(keys), squeeze=False)
    for i, (axis, by) in enumerate(rows):
        for j, key in enumerate(keys):
            ax = subs[i][j]
            opts = [o for o in by if key in by[o]]
            vals = [by[o][key][0] for o in opts]
            colors = ["#999999" if o == "no KD" else "#4c72b0" for o in opts]
            ax.bar(range(len(opts)), vals, color=colors)
            ax.set_xticks(range(len(opts)), [fmt_value(o) for o in opts], fontsize=8)
            ax.set_xlabel(AXIS_NAMES.get(axis, axis))
            ax.set_ylabel(DIAG[key])
            ax.set_title(f"{DIAG[key]} by {axis}", fontsize=10)
    fig.suptitle("Diagnostics on test (mean over each pair's runs, then over pairs)")
    return _save(fig, path)


def plot_heatmap(results: Results, path: Path, top: int = 10) -> Path | None:
    """Test regret per pair of the configurations run on every pair (against each pair's own
    validation-chosen best), the recommended one first."""
    from kdjax.analysis.recommend import regrets, universal

    pairs = results.active
    among = universal(results.study, pairs)[:top]
    if len(among) < 2 or not pairs:  # one configuration: nothing to compare
        return None
    gap = np.array([[-regrets(results.study, c, [p])[p].mean * PTS for c in among] for p in pairs])
    fig = _figure(2.0 + 1.1 * len(among), 2.2 + 0.4 * len(pairs))
    ax = fig.add_subplot()
    lo, hi = min(float(np.nanmin(gap)), -0.1), max(float(np.nanmax(gap)), 0.1)
    im = ax.imshow(gap, cmap="RdYlGn", vmin=lo, vmax=hi, aspect="auto")
    for i in range(len(pairs)):
        for j in range(len(among)):
            ax.text(j, i, f"{gap[i, j]:.1f}", ha="center", va="center", fontsize=7)
    swept = results.study.swept or None
    ax.set_xticks(range(len(among)), [c.label(swept) for c in among], rotation=40, ha="right")
    ax.set_yticks(range(len(pairs)), [pair_name(p) for p in pairs], fontsize=8)
    ax.set_xlabel("configuration run on every pair")
    ax.set_ylabel("dataset / student")
    ax.set_title("Test score minus the pair's validation-chosen best (points)")
    fig.colorbar(im, ax=ax, label="test - pair best (points)")
    return _save(fig, path)


def all_plots(
    effects: Results, out: Path, rankings: list[Ranking] | None = None
) -> dict[str, Path]:
    """Every figure that the ledger supports, written under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    made = {
        "forest": plot_forest(effects, out / "effects_forest.png"),
        "gain": plot_gain(effects, out / "kd_gain.png"),
        "diagnostics": plot_diagnostics(effects, out / "diagnostics.png"),
        "heatmap": plot_heatmap(effects, out / "regret_single_configs.png"),
    }
    for k, r in enumerate(rankings or []):
        made[f"cd:{r.title}"] = plot_cd(r, out / f"cd_diagram_{k}.png")
    return {k: v for k, v in made.items() if v is not None}
