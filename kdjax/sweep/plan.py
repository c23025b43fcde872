"""Expand a manifest into runs, each a resolved `RunConfig` with a stable id.

A run's id is the first 16 hex digits of the sha256 of its resolved config as canonical JSON,
without `output_dir`, with the teacher named by its run id and local data files relative to
the manifest: the same run gets the same id in any process, work directory or machine.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdjax.config import RunConfig
from kdjax.sweep.manifest import AXES, Dataset, Manifest, Student

# A KD configuration: one value per axis, in AXES order (teacher, distance, alpha, tau_t, tau_s).
Point = tuple[Any, ...]
Pair = tuple[str, str]  # (dataset, student)


@dataclass(frozen=True)
class Run:
    run_id: str
    kind: str  # teacher | distill | baseline
    config: RunConfig
    dataset: str
    seed: int
    student: str | None = None
    stage: str | None = None  # greedy: "2:alpha"; None for grid
    teacher_run: str | None = None

    @property
    def pair(self) -> Pair:
        return (self.dataset, self.student or "")

    def columns(self) -> dict[str, Any]:
        """The ledger's descriptive columns for this run."""
        kd = self.config.kd if self.kind == "distill" else None
        return {
            "kind": self.kind,
            "dataset": self.dataset,
            "task": self.config.task,
            "student": self.student,
            "teacher_checkpoint": self.config.teacher_checkpoint if self.student else None,
            "distance": kd.distance if kd else None,
            "alpha": kd.alpha if kd else (0.0 if self.kind == "baseline" else None),
            "tau_t": kd.tau_t if kd else None,
            "tau_s": kd.tau_s if kd else None,
            "tau_squared": int(kd.tau_squared) if kd else None,
            "seed": self.seed,
            "stage": self.stage,
        }


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def canonical_point(point: Point, shared: dict[str, str] | None = None) -> Point | None:
    """The point as run: None for a baseline (alpha 0 ignores the other axes); tau_s equal
    to tau_t is the same run as tau_s 'same'; a distance in `shared` is run as the one it maps
    to (`Manifest.shared_distances`)."""
    p = dict(zip(AXES, point, strict=True))
    if p["alpha"] == 0:
        return None
    if p["tau_s"] != "same" and float(p["tau_s"]) == float(p["tau_t"]):
        p["tau_s"] = "same"
    p["distance"] = (shared or {}).get(p["distance"], p["distance"])
    return tuple(p[a] for a in AXES)


@dataclass
class Stage:
    """One greedy stage: its runs and, per pair, the options compared (point -> run ids)."""

    label: str
    axis: str | None
    runs: list[Run] = field(default_factory=list)
    options: dict[Pair, dict[Point, list[str]]] = field(default_factory=dict)


class Planner:
    """Turns a validated manifest into runs under `workdir/runs/<run_id>`."""

    def __init__(self, manifest: Manifest, workdir: str | Path):
        self.m = manifest
        self.workdir = Path(workdir).resolve()
        self.datasets: dict[str, Dataset] = {d.name: d for d in manifest.resolved_datasets()}
        self.students: dict[str, Student] = {s.name: s for s in manifest.resolved_students()}
        self.teachers: dict[str, Run] = {n: self._teacher(d) for n, d in self.datasets.items()}

    # -- single runs -------------------------------------------------------------------------

    def _make(self, kind: str, spec: dict[str, Any], **meta: Any) -> Run:
        if self.m.mesh is not None:
            spec["mesh"] = self.m.mesh.model_dump()
        ident = RunConfig.model_validate({**spec, "output_dir": "."}).model_dump(mode="json")
        del ident["output_dir"]
        files = ident["data"].get("files") or {}
        for k, v in files.items():
            files[k] = Path(os.path.relpath(v, self.m.root)).as_posix()
        run_id = hashlib.sha256(canonical_json(ident).encode()).hexdigest()[:16]
        real = {**spec, "output_dir": str(self.workdir / "runs" / run_id)}
        if spec.get("teacher"):
            real["teacher"] = str(self.workdir / spec["teacher"])
        return Run(run_id, kind, RunConfig.model_validate(real), **meta)

    def _teacher(self, d: Dataset) -> Run:
        train = {**self.m.train_for(d.task, teacher=True), "seed": self.m.seeds[0]}
        spec = {"task": d.task, "data": d.data, "model": self.m.teacher_model(), "train": train}
        return self._make("teacher", spec, dataset=d.name, seed=self.m.seeds[0])

    def _student(self, dataset: str, student: str, seed: int, checkpoint: str, kd: dict) -> dict:
        d, teacher = self.datasets[dataset], self.teachers[dataset]
        return {
            "task": d.task,
            "data": d.data,
            "model": self.students[student].model,
            "teacher": f"runs/{teacher.run_id}",
            "teacher_checkpoint": checkpoint,
            "teacher_mode": self.m.teacher_mode,
            "kd": kd,
            "train": {**self.m.train_for(d.task), "seed": seed},
        }

    def baseline(
        self,
        dataset: str,
        student: str,
        seed: int,
        stage: str | None = None,
        learning_rate: float | None = None,
    ) -> Run:
        """The no-KD run of a pair and seed: one run whatever the other axes say. It keeps the
        teacher (first checkpoint) only to report student-teacher agreement. `learning_rate`
        overrides the training settings' (a tuned baseline, `baseline: {learning_rate: ...}`)."""
        spec = self._student(dataset, student, seed, self.m.axes.teacher[0], {"alpha": 0.0})
        if learning_rate is not None:
            spec["train"]["learning_rate"] = learning_rate
        meta = {"dataset": dataset, "student": student, "seed": seed, "stage": stage}
        return self._make("baseline", spec, teacher_run=self.teachers[dataset].run_id, **meta)

    def baselines(self, pair: Pair, seed: int, stage: str | None = None) -> list[Run]:
        """The pair's no-KD runs for `seed`: the untuned one, then one per manifest learning
        rate (a rate equal to the training settings' is the untuned run)."""
        return unique([self.baseline(*pair, seed, stage, lr) for lr in self.m.baseline_lrs()])

    def distill(
        self, dataset: str, student: str, point: Point, seed: int, stage: str | None = None
    ) -> Run:
        p = canonical_point(point, self.m.shared_distances())
        if p is None:
            return self.baseline(dataset, student, seed, stage)
        ckpt, distance, alpha, tau_t, tau_s = p
        kd = {
            "distance": distance,
            "alpha": alpha,
            "tau_t": tau_t,
            "tau_s": tau_s,
            "tau_squared": self.m.tau_squared,
        }
        spec = self._student(dataset, student, seed, ckpt, kd)
        meta = {"dataset": dataset, "student": student, "seed": seed, "stage": stage}
        return self._make("distill", spec, teacher_run=self.teachers[dataset].run_id, **meta)

    # -- whole plans -------------------------------------------------------------------------

    def pairs(self) -> list[Pair]:
        return [(d, s) for d in self.datasets for s in self.students]

    def default_point(self) -> Point:
        return tuple(getattr(self.m.axes, a)[0] for a in AXES)

    def grid(self) -> list[Run]:
        """Every combination of the axes for every pair and seed, plus baselines; deduplicated."""
        values = [getattr(self.m.axes, a) for a in AXES]
        runs: dict[str, Run] = {}
        for (d, s), seed in itertools.product(self.pairs(), self.m.seeds):
            for r in self.baselines((d, s), seed):
                runs.setdefault(r.run_id, r)
            for point in itertools.product(*values):
                r = self.distill(d, s, point, seed)
                runs.setdefault(r.run_id, r)
        return list(runs.values())

    def stage_labels(self) -> list[str]:
        return ["0:default"] + [f"{k}:{a}" for k, a in enumerate(self.m.order(), 1)]

    def greedy_stage(self, k: int, best: dict[Pair, Point]) -> Stage:
        """Stage 0: the default point (and baselines); stage k: the k-th axis of the search
        order varied around each pair's current best. Only pairs in `best` take part."""
        if k == 0:
            stage = Stage("0:default", None)
            for pair in best:
                stage.options[pair] = {}
                self._add(stage, pair, best[pair])
                for seed in self.m.seeds:
                    stage.runs += self.baselines(pair, seed, "0:baseline")
            return stage
        axis = self.m.order()[k - 1]
        stage = Stage(f"{k}:{axis}", axis)
        i = AXES.index(axis)
        for pair, point in best.items():
            stage.options[pair] = {}
            for v in getattr(self.m.axes, axis):
                self._add(stage, pair, point[:i] + (v,) + point[i + 1 :])
        return stage

    def sensitivity_stage(self, best: dict[Pair, Point]) -> Stage:
        """Around each pair's optimum (`best`), change one knob at a time: the optimum plus
        sum(|axis| - 1) points per pair, every option then with the same tuning of the other
        knobs. Runs already done (same run id) are reused, not rerun."""
        stage = Stage("sensitivity", None)
        for pair, point in best.items():
            stage.options[pair] = {}
            self._add(stage, pair, point)
            for i, axis in enumerate(AXES):
                for v in getattr(self.m.axes, axis):
                    if v != point[i]:
                        self._add(stage, pair, point[:i] + (v,) + point[i + 1 :])
        return stage

    def point_score(self, pair: Pair, point: Point, scores: dict[str, float]) -> float | None:
        """Mean validation score of `point` on `pair` over its finished seeds (`scores`: run id
        -> validation metric), or None when none finished."""
        vals = [scores[i] for i in self._ids(pair, point) if i in scores]
        return sum(vals) / len(vals) if vals else None

    def _ids(self, pair: Pair, point: Point) -> list[str]:
        return [self.distill(*pair, point, s).run_id for s in self.m.seeds]

    def consensus(self, winners: dict[Pair, Point], scores: dict[str, float]) -> Point | None:
        """The study's best by mean validation: axis by axis, the option whose one-knob
        variants of the pairs' optima (`winners`) score highest on validation, averaged over
        the pairs where every option of the axis finished (a paired comparison); an axis with
        no such pair keeps the most frequent winner's option. None without winners."""
        if not winners:
            return None
        modal = Counter(winners.values()).most_common(1)[0][0]
        out = []
        for i, axis in enumerate(AXES):
            options = getattr(self.m.axes, axis)
            table: dict[Any, list[float]] = {v: [] for v in options}
            for pair, point in winners.items():
                row = {v: self.point_score(pair, point[:i] + (v,) + point[i + 1 :], scores)
                       for v in options}  # fmt: skip
                if all(x is not None for x in row.values()):
                    for v, x in row.items():
                        table[v].append(x)
            if not table[options[0]]:
                out.append(modal[i])
                continue
            means = {v: sum(xs) / len(xs) for v, xs in table.items()}
            out.append(max(options, key=lambda v: (means[v], v == modal[i])))
        return tuple(out)

    def transfer_candidates(
        self, winners: dict[Pair, Point], scores: dict[str, float]
    ) -> list[tuple[Point, list[str]]]:
        """Single configurations worth running on every pair, each with why: the
        `search.transfer_top_k` most frequent per-pair winners, the study's best by mean
        validation (`consensus`) and the reference study's recommendation (teacher ll, distance
        ce, tau_s 1, at the consensus' tau_t and alpha). Chosen on validation only."""
        found: dict[Point, list[str]] = {}

        def add(point: Point | None, why: str) -> None:
            if point is not None:
                found.setdefault(point, []).append(why)

        counts = Counter(winners.values()).most_common(self.m.search.transfer_top_k)
        for point, n in counts:
            add(point, f"winner on {n} of {len(winners)} pairs")
        best = self.consensus(winners, scores)
        add(best, "best mean validation, axis by axis")
        if best is not None:
            ref = dict(zip(AXES, best, strict=True))
            ref.update(teacher="ll", distance="ce", tau_s=1.0)
            add(tuple(ref[a] for a in AXES), "reference study's recommendation")
        return list(found.items())

    def transfer_stage(self, candidates: list[tuple[Point, list[str]]]) -> Stage:
        """Every candidate configuration on every pair and seed (runs done already reused)."""
        stage = Stage("transfer", None)
        for pair in self.pairs():
            stage.options[pair] = {}
            for point, _ in candidates:
                self._add(stage, pair, point)
        return stage

    def _add(self, stage: Stage, pair: Pair, point: Point) -> None:
        runs = [self.distill(*pair, point, s, stage.label) for s in self.m.seeds]
        stage.options[pair][point] = [r.run_id for r in runs]
        stage.runs += runs


def choose(
    options: dict[Point, list[str]], scores: dict[str, float], incumbent: Point | None
) -> Point | None:
    """The option with the best validation score averaged over its finished seeds; ties keep
    the incumbent, then the earlier option. None when no option finished."""
    order = sorted(options, key=lambda p: p != incumbent)  # stable: incumbent first
    best, best_score = None, None
    for point in order:
        vals = [scores[r] for r in options[point] if r in scores]
        if vals and (best_score is None or sum(vals) / len(vals) > best_score):
            best, best_score = point, sum(vals) / len(vals)
    return best


def unique(runs: list[Run]) -> list[Run]:
    seen: dict[str, Run] = {}
    for r in runs:
        seen.setdefault(r.run_id, r)
    return list(seen.values())
