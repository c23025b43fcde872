"""What a ledger is missing, and which conclusions each missing piece weakens."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kdjax.analysis.configs import AXIS_NAMES, BASELINE, Config, Pair, config_of, fmt_value
from kdjax.analysis.results import Results

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
        partial = self.partial_configs and not self.greedy  # greedy skips configs by design
        missing = self.no_teacher or self.no_baseline or self.no_results or partial
        return not unfinished and not missing


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0][:160]


def find_gaps(effects: Results) -> Gaps:
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
    no_results = [p for p in study.pairs if p not in effects.active and p not in effects.stuck]
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
    gaps.greedy = study.strategy == "greedy"
    gaps.notes = _notes(effects, gaps)
    return gaps


def _notes(effects: Results, g: Gaps) -> list[str]:
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
    if g.no_baseline:
        why = ", ".join(f"{pair_name(p)} ({s})" for p, s in g.no_baseline[:6])
        notes.append(
            f"No finished no-KD baseline for {len(g.no_baseline)} pair(s): {why}; the KD gain "
            "is not computed there."
        )
    for pair, why in effects.stuck.items():
        notes.append(f"{pair_name(pair)} is reported apart and left out of every mean: {why}.")
    for axis, eff in effects.axes.items():
        axis_name = AXIS_NAMES.get(axis, axis)
        for o in eff.options:
            opt = fmt_value(o.option)
            if not o.n_pairs:
                notes.append(
                    f"{axis_name}: {opt} was never run next to the best option with every other "
                    "knob the same; it has no effect estimate."
                )
            elif o.n_pairs < n:
                notes.append(
                    f"{axis_name}: the effect of {opt} uses {o.n_pairs} of {n} pairs (the others "
                    "have no run of it next to the best option with every other knob the same)."
                )
    rec = effects.recommendation
    if rec.get("config") is None and n:
        notes.append(f"No single configuration: {rec.get('reason', 'none was run everywhere')}.")
    if g.greedy and not any(
        "sensitivity" in c.stages for p in study.pairs for c in study.cells[p].values()
    ):
        notes.append(
            "Greedy search without a sensitivity stage: each axis's effect comes from the stage "
            "that varied it, around that stage's incumbent; the later axes were then tuned for "
            "the winner only. Turn on `search.sensitivity` to measure every option around the "
            "final optimum."
        )
    if len(study.seeds) < 2:
        notes.append(
            "One seed only: no spread over seeds; within-pair statements rest on test-example "
            "noise only."
        )
    elif g.few_seeds:
        notes.append(
            f"{g.few_seeds} (pair, configuration) result(s) have fewer than "
            f"{len(study.seeds)} seeds; their means are noisier."
        )
    return notes
