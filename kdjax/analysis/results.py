"""A study's answers in one object, and the two machine-readable ones as public functions:
`effects_frame(workdir)` (report/effects.csv) and `recommendation(workdir)`
(report/recommendation.json)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdjax.analysis.breakdowns import diagnostics_by
from kdjax.analysis.configs import Pair
from kdjax.analysis.degenerate import equivalence_notes, stuck_pairs
from kdjax.analysis.effects import AxisEffect, active_pairs, all_axis_effects, frame
from kdjax.analysis.load import Study, load_study
from kdjax.analysis.recommend import Gain, kd_gain, recommend
from kdjax.analysis.stats import MIN_PAIRS


@dataclass
class Results:
    study: Study
    active: list[Pair]  # pairs in every mean
    stuck: dict[Pair, str]  # pairs reported apart, with the reason
    axes: dict[str, AxisEffect]
    recommendation: dict[str, Any]
    gains: list[Gain]
    equivalences: list[str]
    diagnostics: dict[str, dict[Any, dict[str, tuple[float, int]]]]

    @property
    def cross_pair(self) -> bool:
        """Enough pairs for a claim beyond the pairs themselves."""
        return len(self.active) >= MIN_PAIRS

    def effects(self) -> Any:
        """The effects table as a pandas DataFrame (report/effects.csv)."""
        return frame(self.axes)


def analyse(study: Study, n_boot: int = 1000, seed: int = 0) -> Results:
    """Every answer the report gives, computed from a loaded study."""
    active = active_pairs(study)
    axes = all_axis_effects(study, n_boot, seed)
    rec = recommend(study, active, axes, n_boot, seed)
    gains = kd_gain(study, active, n_boot, seed)
    shown = [a for a in ("distance", "tau_t", "tau_s") if a in study.swept]
    diagnostics = {a: diagnostics_by(study, a) for a in shown}
    stuck, notes = stuck_pairs(study), equivalence_notes(study)
    return Results(study, active, stuck, axes, rec, gains, notes, diagnostics)


def analyse_workdir(workdir: str | Path, n_boot: int = 1000, seed: int = 0) -> Results:
    return analyse(load_study(workdir), n_boot, seed)


def effects_frame(workdir: str | Path, n_boot: int = 1000, seed: int = 0) -> Any:
    """One row per (axis, option): `axis, option, effect, ci_low, ci_high, p_value, verdict,
    n_pairs`; effect and interval in points of the study's metric (0 for the axis's best
    option, chosen on validation; negative = worse), p-value Holm-adjusted within the table."""
    return analyse_workdir(workdir, n_boot, seed).effects()


def recommendation(workdir: str | Path, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The single configuration for every pair, with its regrets (report/recommendation.json)."""
    return analyse_workdir(workdir, n_boot, seed).recommendation
