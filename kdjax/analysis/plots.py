"""The report's figures, drawn with matplotlib's Agg canvas (no display, no global state).

Each function returns the PNG's path, or None when the ledger has too little for that figure.
Scores and regrets are drawn in points (x 100), as in the report's tables.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kdjax.analysis.configs import AXIS_NAMES, fmt_value
from kdjax.analysis.effects import Effects
from kdjax.analysis.gaps import pair_name

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


def plot_regret(effects: Effects, path: Path) -> Path | None:
    """Per swept axis: mean regret per option (bars, seed spread as error bars) and worst case."""
    axes = [a for a, e in effects.axes.items() if any(o.n_pairs for o in e.options)]
    if not axes:
        return None
    fig = _figure(3.2 * len(axes) + 1, 3.8)
    subs = fig.subplots(1, len(axes), squeeze=False)[0]
    for ax, axis in zip(subs, axes, strict=True):
        opts = [o for o in effects.axes[axis].options if o.n_pairs]
        x = np.arange(len(opts))
        mean = [o.mean_regret * PTS for o in opts]
        err = [(o.regret_std or 0.0) * PTS for o in opts]
        ax.bar(x, mean, yerr=err, color="#4c72b0", capsize=3, label="mean over pairs")
        ax.scatter(
            x,
            [o.worst_regret * PTS for o in opts],
            marker="v",
            color="#c44e52",
            zorder=3,
            label="worst pair",
        )
        ax.set_xticks(x, [fmt_value(o.option) for o in opts])
        ax.axhline(0, color="#888", lw=0.8)
        ax.set_title(AXIS_NAMES.get(axis, axis))
        ax.set_xlabel("option")
        ax.set_ylabel("regret, test (points)")
    subs[0].legend(fontsize=8)
    fig.suptitle("Cost of each option: pair best - best with the option fixed (validation-chosen)")
    return _save(fig, path)


def plot_gain(effects: Effects, path: Path) -> Path | None:
    """Per pair: best KD configuration minus the no-KD baseline, on test."""
    rows = [(p, r) for p, r in effects.pairs.items() if r.gain is not None]
    if not rows:
        return None
    fig = _figure(7.5, 1.2 + 0.35 * len(rows))
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    gains = [r.gain * PTS for _, r in rows]
    err = []
    for _, r in rows:
        g = list(r.gain_seeds.values())
        err.append(float(np.std(g, ddof=1)) * PTS if len(g) > 1 else 0.0)
    colors = ["#55a868" if g >= 0 else "#c44e52" for g in gains]
    ax.barh(y, gains, xerr=err, color=colors, capsize=3)
    ax.set_yticks(y, [pair_name(p) for p, _ in rows])
    ax.invert_yaxis()
    ax.axvline(0, color="#888", lw=0.8)
    ax.set_xlabel("KD gain: best KD test - no-KD test (points)")
    ax.set_ylabel("dataset / student")
    ax.set_title("KD gain over the no-KD baseline per pair")
    return _save(fig, path)


def plot_tau(effects: Effects, path: Path) -> Path | None:
    """Mean test score over pairs against the teacher temperature, one line per distance."""
    lines = {d: v for d, v in effects.grid.items() if len(v) >= 2}
    if not lines:
        return None
    fig = _figure(6.5, 4.2)
    ax = fig.add_subplot()
    for distance, points in lines.items():
        xs = sorted(points)
        ax.plot(xs, [points[t][0] * PTS for t in xs], marker="o", label=str(distance))
    ax.set_xscale("log", base=2)
    ticks = sorted({t for v in lines.values() for t in v})
    ax.set_xticks(ticks, [fmt_value(t) for t in ticks])
    ax.set_xlabel("teacher temperature tau_t")
    ax.set_ylabel("mean test score over pairs (points)")
    ax.set_title("Score vs teacher temperature per distance (other axes at their best)")
    ax.legend(title="distance", fontsize=8)
    return _save(fig, path)


def plot_diagnostics(effects: Effects, path: Path) -> Path | None:
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


def plot_heatmap(effects: Effects, path: Path, top: int = 10) -> Path | None:
    """Test score per pair for the top-ranked configurations, coloured by the gap to the
    pair's validation-chosen best."""
    ranked = effects.ranking[:top]
    pairs = effects.active
    if not ranked or not pairs:
        return None
    swept = effects.study.swept or None
    gap = np.full((len(pairs), len(ranked)), np.nan)
    score = np.full_like(gap, np.nan)
    for j, r in enumerate(ranked):
        for i, p in enumerate(pairs):
            if p in r.scores:
                score[i, j] = r.scores[p] * PTS
                gap[i, j] = -r.regret[p] * PTS
    fig = _figure(2.0 + 1.1 * len(ranked), 2.2 + 0.4 * len(pairs))
    ax = fig.add_subplot()
    # Green at the pair's best (0) or above it (test noise), red for the largest loss.
    lo, hi = min(float(np.nanmin(gap)), -0.1), max(float(np.nanmax(gap)), 0.0)
    im = ax.imshow(gap, cmap="RdYlGn", vmin=lo, vmax=hi, aspect="auto")
    for i in range(len(pairs)):
        for j in range(len(ranked)):
            if not np.isnan(score[i, j]):
                ax.text(j, i, f"{score[i, j]:.1f}", ha="center", va="center", fontsize=7)
    labels = [f"#{k + 1} " + r.config.label(swept) for k, r in enumerate(ranked)]
    ax.set_xticks(range(len(ranked)), labels, rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(len(pairs)), [pair_name(p) for p in pairs], fontsize=8)
    ax.set_xlabel("configuration (ranked by mean normalised validation score)")
    ax.set_ylabel("dataset / student")
    ax.set_title("Test score per pair (numbers); colour: gap to the pair's validation-chosen best")
    fig.colorbar(im, ax=ax, label="test - pair best test (points)")
    return _save(fig, path)


def all_plots(effects: Effects, out: Path) -> dict[str, Path]:
    """Every figure that the ledger supports, written under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    made = {
        "regret": plot_regret(effects, out / "regret_per_option.png"),
        "gain": plot_gain(effects, out / "kd_gain.png"),
        "tau": plot_tau(effects, out / "score_vs_tau_t.png"),
        "diagnostics": plot_diagnostics(effects, out / "diagnostics.png"),
        "heatmap": plot_heatmap(effects, out / "heatmap_top_configs.png"),
    }
    return {k: v for k, v in made.items() if v is not None}
