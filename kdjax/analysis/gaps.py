"""What a ledger is missing, and which conclusions each missing piece weakens."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kdjax.analysis.configs import AXIS_NAMES, BASELINE, Config, Pair, config_of, fmt_value
from kdjax.analysis.effects import Effects

STATUSES = ("done", "failed", "pending", "running")
KINDS = ("teacher", "distill", "baseline")


def pair_name(pair: Pair | None) -> str:
    return "-" if pair is None else f"{pair[0]}/{pair[1]}"


def _pairs(pairs: list[Pair], limit: int = 6) -> str:
    names = [pair_name(p) for p in pairs]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


@dataclass
class Gaps:
    counts: dict[tuple[str, str], int]
    failed: list[dict[str, Any]]
    no_teacher: list[tuple[str, str]]  # dataset, status
    no_baseline: list[tuple[Pair, str]]  # pair, why
    no_results: list[Pair]
    partial_configs: list[tuple[Config, int]]  # run on fewer than every active pair
    few_seeds: int  # (pair, configuration) cells with fewer seeds than the study's
    unfinished: list[tuple[str, str, int, int]] = field(default_factory=list)  # who, kind, p, r
    greedy: bool = False  # runs carry greedy stage labels: partial coverage is by design
    notes: list[str] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(n for (_, s), n in self.counts.items() if s == status)

    @property
    def complete(self) -> bool:
        """Every run finished and every pair has a teacher, a baseline and every config."""
        unfinished = any(self.count(s) for s in ("failed", "pending", "running"))
        missing = self.no_teacher or self.no_baseline or self.no_results or self.partial_configs
        return not unfinished and not missing


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0][:160]


def find_gaps(effects: Effects) -> Gaps:
    """Count missing and unfinished runs and explain what each gap weakens."""
    study = effects.study
    counts = Counter((r["kind"], r["status"]) for r in study.rows)
    failed = []
    for r in study.rows:
        if r["status"] != "failed":
            continue
        who = f"{r['dataset']}/{r['student']}" if r.get("student") else r["dataset"]
        what = {"teacher": "teacher", "baseline": "no KD"}.get(r["kind"])
        failed.append(
            {
                "run_id": r["run_id"],
                "kind": r["kind"],
                "pair": who,
                "config": what or config_of(r).label(),
                "error": _first_line(r["error"]),
            }
        )
    datasets = list(dict.fromkeys(p[0] for p in study.pairs))
    no_teacher = []
    for d in datasets:
        t = study.teachers.get(d)
        if t is None or t.status != "done" or t.test is None:
            no_teacher.append((d, t.status if t else "not in ledger"))
    no_baseline = []
    for pair in study.pairs:
        if study.baseline(pair) is None:
            st = [
                r["status"]
                for r in study.rows
                if r["kind"] == "baseline" and (r["dataset"], r["student"]) == pair
            ]
            no_baseline.append((pair, ", ".join(sorted(set(st))) if st else "not in ledger"))
    no_results = [p for p in study.pairs if p not in effects.active]
    on: Counter[Config] = Counter()
    for pair in effects.active:
        on.update(c for c in study.cells[pair] if c != BASELINE)
    n_active = len(effects.active)
    partial = [(c, n) for c, n in on.items() if n < n_active]
    n_seeds = len(study.seeds)
    few = sum(1 for p in study.pairs for cell in study.cells[p].values() if cell.n < n_seeds)
    waiting: Counter[tuple[str, str, str]] = Counter()
    for r in study.rows:
        if r["status"] in ("pending", "running"):
            who = f"{r['dataset']}/{r['student']}" if r.get("student") else r["dataset"]
            waiting[who, r["kind"], r["status"]] += 1
    unfinished = sorted(
        {(w, k, waiting[w, k, "pending"], waiting[w, k, "running"]) for w, k, _ in waiting}
    )
    gaps = Gaps(dict(counts), failed, no_teacher, no_baseline, no_results, partial, few)
    gaps.unfinished = unfinished
    stages = {s for p in study.pairs for c in study.cells[p].values() for s in c.stages}
    gaps.greedy = bool(stages - {"grid"})
    gaps.notes = _notes(effects, gaps)
    return gaps


def _notes(effects: Effects, g: Gaps) -> list[str]:
    study, n = effects.study, len(effects.active)
    notes = []
    unfinished = {s: g.count(s) for s in ("failed", "pending", "running") if g.count(s)}
    if unfinished:
        what = ", ".join(f"{k} {v}" for k, v in unfinished.items())
        notes.append(f"Not every run finished ({what}): all numbers use finished runs only.")
    if g.no_results:
        notes.append(
            f"No finished configuration for {len(g.no_results)} of {len(study.pairs)} pairs "
            f"({_pairs(g.no_results)}): these pairs are left out of every conclusion."
        )
    if g.no_teacher:
        ds = ", ".join(f"{d} ({s})" for d, s in g.no_teacher)
        notes.append(f"Teacher score missing for: {ds}.")
    gained = sum(1 for p in effects.active if effects.pairs[p].gain is not None)
    if g.no_baseline:
        why = ", ".join(f"{pair_name(p)} ({s})" for p, s in g.no_baseline[:6])
        notes.append(
            f"KD gain over no KD is computed on {gained} of {n} pairs; no finished baseline "
            f"for {len(g.no_baseline)} pair(s): {why}."
        )
    for axis, eff in effects.axes.items():
        for o in eff.options:
            axis_name, opt = AXIS_NAMES.get(axis, axis), fmt_value(o.option)
            if not o.n_pairs:
                notes.append(f"{axis_name}: {opt} has no finished run; it is not compared.")
            elif o.missing:
                notes.append(
                    f"{axis_name}: regret of {opt} is computed on {o.n_pairs} of {n} pairs "
                    f"(not run on {_pairs(o.missing)})."
                )
    if g.partial_configs:
        most = effects.ranking_coverage
        ranked = len(effects.ranking)
        if effects.ranking_complete:
            notes.append(
                f"The single best configuration is chosen among the {ranked} configurations run "
                f"on all {n} pairs; {len(g.partial_configs)} configurations were run on fewer "
                "pairs (failed, unfinished, or skipped by a greedy search) and are not ranked."
            )
        elif ranked:
            notes.append(
                f"No configuration was run on all {n} pairs: the ranking uses the {ranked} "
                f"configuration(s) run on {most} pairs, so the single best is provisional."
            )
    if g.greedy:
        notes.append(
            "Greedy search: each option was tried only around each pair's incumbent, so 'the "
            "other axes at their best' means the best the search visited, not a full grid."
        )
    if len(study.seeds) < 2:
        notes.append(
            "One seed only: no spread over seeds; bootstrap intervals reflect pair-to-pair "
            "variation only."
        )
    elif g.few_seeds:
        notes.append(
            f"{g.few_seeds} (pair, configuration) result(s) have fewer than "
            f"{len(study.seeds)} seeds; their means are noisier."
        )
    return notes
