"""Synthetic ledgers with planted answers, for the analysis tests (pure numpy, no training).

A run's true score is `truth(pair, point)`; a run draws a seed shift (training noise), a noisy
validation score, and per-example 0/1 test outcomes (examples share a fixed difficulty per
dataset, so runs are paired on examples). Greedy studies are searched like the real planner:
stage 0 the default, stage k the k-th axis around each pair's incumbent (chosen on validation),
then the sensitivity stage (one knob at a time around the optimum) and the transfer stage.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

AXES = ("teacher", "distance", "alpha", "tau_t", "tau_s")
Point = tuple[Any, ...]


def canonical(point: Point) -> Point | None:
    p = dict(zip(AXES, point, strict=True))
    if p["alpha"] == 0:
        return None
    if p["tau_s"] != "same" and float(p["tau_s"]) == float(p["tau_t"]):
        p["tau_s"] = "same"
    return tuple(p[a] for a in AXES)


class Simulator:
    """Draws ledger rows for one study."""

    def __init__(
        self,
        truth: Callable[[tuple[str, str], dict[str, Any]], float],
        axes: dict[str, list[Any]],
        pairs: list[tuple[str, str]],
        seeds: tuple[int, ...] = (0, 1),
        n_examples: int = 400,
        seed_sd: float = 0.003,
        val_sd: float = 0.003,
        rng: int | np.random.Generator = 0,
        outcomes: bool = True,
        lrs: tuple[float, ...] = (),
        val_shift: Callable[[tuple[str, str], dict[str, Any]], float] | None = None,
        as_json: bool = True,
        same_runs: dict[str, tuple[Any, Any]] | None = None,
    ):
        self.truth, self.axes, self.pairs, self.seeds = truth, axes, pairs, seeds
        self.n, self.seed_sd, self.val_sd, self.outcomes = n_examples, seed_sd, val_sd, outcomes
        self.lrs, self.val_shift = lrs, val_shift
        self.dump = json.dumps if as_json else (lambda x: x)  # dicts: rows for memory only
        # axis -> (a, b): b trains exactly like a (ce and kl: equal gradients), same draws
        self.same_runs = {"distance": ("ce", "kl")} if same_runs is None else same_runs
        self.rng = np.random.default_rng(rng)
        datasets = sorted({p[0] for p in pairs})
        self.difficulty = {d: self.rng.uniform(-0.3, 0.3, n_examples) for d in datasets}
        self.ids = {d: [f"{d}-{i}" for i in range(n_examples)] for d in datasets}
        self.rows: list[dict[str, Any]] = []
        self.done: dict[tuple, dict[str, Any]] = {}

    def run(self, pair, point: Point | None, seed: int, stage: str, lr: float = 5e-5) -> float:
        """The run's validation score (drawn once; a repeated run is the ledger's same row)."""
        p = None if point is None else canonical(point)
        key = (pair, p, seed, lr)
        if key in self.done:
            return self.done[key]["val_metric"]
        spec = dict(zip(AXES, p, strict=True)) if p else {"alpha": 0.0}
        for axis, (a, b) in self.same_runs.items():
            if p and spec[axis] == b:
                twin = p[: AXES.index(axis)] + (a,) + p[AXES.index(axis) + 1 :]
                self.run(pair, twin, seed, stage, lr)
                row = {**self.done[(pair, twin, seed, lr)], axis: b, "stage": stage}
                row["run_id"] = f"r{len(self.rows)}"
                self.rows.append(row)
                self.done[key] = row
                return row["val_metric"]
        true = self.truth(pair, spec) if p else self.truth(pair, {"baseline": lr})
        shift = self.rng.normal(0, self.seed_sd)
        val = true + shift + self.rng.normal(0, self.val_sd)
        if self.val_shift is not None and p:
            val += self.val_shift(pair, spec)  # validation and test disagree by design
        prob = np.clip(true + shift + self.difficulty[pair[0]], 0.0, 1.0)
        correct = (self.rng.random(self.n) < prob).astype(float)
        result: dict[str, Any] = {"metric": "accuracy"}
        if self.outcomes:
            values = correct.tolist() if self.dump is json.dumps else correct
            result["test_outcomes"] = {"ids": self.ids[pair[0]], "values": values}
        row = {
            "run_id": f"r{len(self.rows)}",
            "kind": "baseline" if p is None else "distill",
            "status": "done",
            "dataset": pair[0],
            "student": pair[1],
            "seed": seed,
            "stage": stage,
            "teacher_checkpoint": spec.get("teacher", "hs"),
            "distance": spec.get("distance"),
            "alpha": spec["alpha"],
            "tau_t": spec.get("tau_t"),
            "tau_s": spec.get("tau_s"),
            "tau_squared": 0 if p else None,
            "val_metric": float(val),
            "test_metric": float(correct.mean()),
            "metric_name": "accuracy",
            "result_json": self.dump(result),
            "config_json": self.dump({"train": {"learning_rate": lr}}),
        }
        self.rows.append(row)
        self.done[key] = row
        return row["val_metric"]

    def point_val(self, pair, point: Point, stage: str) -> float:
        return float(np.mean([self.run(pair, point, s, stage) for s in self.seeds]))

    def baselines(self, stage: str = "0:baseline") -> None:
        for pair, s in itertools.product(self.pairs, self.seeds):
            self.run(pair, None, s, stage)
            for lr in self.lrs:
                self.run(pair, None, s, "baseline-lr", lr)

    def grid(self) -> None:
        self.baselines()
        for pair in self.pairs:
            for point in itertools.product(*self.axes.values()):
                self.point_val(pair, point, "grid")

    def greedy(self, order: list[str], sensitivity: bool = True, transfer: bool = True) -> dict:
        """Search like the planner; returns each pair's optimum."""
        self.baselines()
        default = tuple(v[0] for v in self.axes.values())
        best = {}
        for pair in self.pairs:
            inc = default
            self.point_val(pair, inc, "0:default")
            for k, axis in enumerate(order, 1):
                i = AXES.index(axis)
                cand = [inc[:i] + (v,) + inc[i + 1 :] for v in self.axes[axis]]
                vals = {c: self.point_val(pair, c, f"{k}:{axis}") for c in cand}
                inc = max(cand, key=lambda c: (vals[c], c == inc))
            best[pair] = inc
        if sensitivity:
            for pair, opt in best.items():
                for i, axis in enumerate(AXES):
                    for v in self.axes[axis]:
                        self.point_val(pair, opt[:i] + (v,) + opt[i + 1 :], "sensitivity")
        if transfer:
            winners = [c for c, _ in Counter(best.values()).most_common(2)]
            for pair in self.pairs:
                for c in winners:
                    self.point_val(pair, c, "transfer")
        return best

    def manifest(self, strategy: str) -> dict[str, Any]:
        return {
            "axes": {a: list(v) for a, v in self.axes.items()},
            "search": {"strategy": strategy},
        }


def additive(base: dict[tuple[str, str], float], effects: dict[str, dict[Any, float]]):
    """truth(pair, point) = base[pair] + the planted effect of each option (fractions); a
    baseline point scores base - 0.02. tau_s effects are keyed by the student temperature as
    trained: 'same' at tau_t t is tau_s t."""

    def truth(pair, spec):
        if "baseline" in spec:
            return base[pair] - 0.02
        s = base[pair]
        for axis, v in spec.items():
            if axis == "tau_s":
                v = float(spec["tau_t"] if v == "same" else v)
            s += effects.get(axis, {}).get(v, 0.0)
        return s

    return truth
