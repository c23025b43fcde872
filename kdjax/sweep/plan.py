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


def canonical_point(point: Point) -> Point | None:
    """The point as run: None for a baseline (alpha 0 ignores the other axes); tau_s equal
    to tau_t is the same run as tau_s 'same'."""
    p = dict(zip(AXES, point, strict=True))
    if p["alpha"] == 0:
        return None
    if p["tau_s"] != "same" and float(p["tau_s"]) == float(p["tau_t"]):
        p["tau_s"] = "same"
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

    def baseline(self, dataset: str, student: str, seed: int, stage: str | None = None) -> Run:
        """The no-KD run of a pair and seed: one run whatever the other axes say. It keeps the
        teacher (first checkpoint) only to report student-teacher agreement."""
        spec = self._student(dataset, student, seed, self.m.axes.teacher[0], {"alpha": 0.0})
        meta = {"dataset": dataset, "student": student, "seed": seed, "stage": stage}
        return self._make("baseline", spec, teacher_run=self.teachers[dataset].run_id, **meta)

    def distill(
        self, dataset: str, student: str, point: Point, seed: int, stage: str | None = None
    ) -> Run:
        p = canonical_point(point)
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
            if self.m.baseline:
                r = self.baseline(d, s, seed)
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
                if self.m.baseline:
                    stage.runs += [self.baseline(*pair, s, "0:baseline") for s in self.m.seeds]
            return stage
        axis = self.m.order()[k - 1]
        stage = Stage(f"{k}:{axis}", axis)
        i = AXES.index(axis)
        for pair, point in best.items():
            stage.options[pair] = {}
            for v in getattr(self.m.axes, axis):
                self._add(stage, pair, point[:i] + (v,) + point[i + 1 :])
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
