"""Read a sweep ledger into a tidy study: finished runs grouped by pair and configuration,
with validation and test metrics per seed (means and spreads over seeds on each cell)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kdjax.analysis.configs import (
    BASELINE,
    KD_AXES,
    MANIFEST_AXES,
    Config,
    Pair,
    config_of,
    given_tau_s,
)


@dataclass
class Cell:
    """The finished seeds of one configuration on one pair."""

    val: dict[int, float] = field(default_factory=dict)
    test: dict[int, float] = field(default_factory=dict)
    diag: dict[int, dict[str, float]] = field(default_factory=dict)
    stages: set[str] = field(default_factory=set)

    @property
    def n(self) -> int:
        return len(self.test)

    @property
    def val_mean(self) -> float:
        return float(np.mean(list(self.val.values())))

    @property
    def test_mean(self) -> float:
        return float(np.mean(list(self.test.values())))

    @property
    def val_std(self) -> float | None:
        return float(np.std(list(self.val.values()), ddof=1)) if self.n > 1 else None

    @property
    def test_std(self) -> float | None:
        return float(np.std(list(self.test.values()), ddof=1)) if self.n > 1 else None


@dataclass
class Teacher:
    dataset: str
    status: str
    metric: str | None = None
    val: float | None = None  # hs checkpoint
    test: float | None = None  # hs checkpoint
    ll_val: float | None = None  # the ll checkpoint's validation score


@dataclass
class Study:
    """A ledger read for analysis. `cells[pair][config]` holds finished runs only."""

    rows: list[dict[str, Any]]
    pairs: list[Pair]
    cells: dict[Pair, dict[Config, Cell]]
    teachers: dict[str, Teacher]
    axes: dict[str, list[Any]]  # axis -> options in given form, default first
    metric: dict[str, str]  # dataset -> metric name
    seeds: list[int]
    configs: list[Config]  # every configuration seen, in ledger order

    @property
    def swept(self) -> list[str]:
        return [a for a, opts in self.axes.items() if len(opts) > 1]

    def baseline_in_space(self) -> bool:
        """Alpha 0 listed as an alpha option makes the no-KD run a configuration to choose."""
        return any(float(v) == 0.0 for v in self.axes.get("alpha", []))

    def candidates(self, pair: Pair) -> dict[Config, Cell]:
        """The configurations a pair's best is chosen from."""
        keep = self.baseline_in_space()
        return {c: x for c, x in self.cells.get(pair, {}).items() if keep or not c.is_baseline}

    def best(self, pair: Pair, fixed: dict[str, Any] | None = None) -> Config | None:
        """The pair's validation-best configuration having every option in `fixed` (axis ->
        option, given form); ties keep the first in ledger order."""
        best, cells = None, self.candidates(pair)
        for c, cell in cells.items():
            if fixed and not all(c.has(a, v) for a, v in fixed.items()):
                continue
            if best is None or cell.val_mean > cells[best].val_mean:
                best = c
        return best

    def baseline(self, pair: Pair) -> Cell | None:
        return self.cells.get(pair, {}).get(BASELINE)


def read_rows(ledger: str | Path) -> list[dict[str, Any]]:
    """All rows of a ledger file, in insertion order."""
    path = Path(ledger)
    if not path.is_file():
        raise FileNotFoundError(f"no ledger at {path}; run `kdjax run MANIFEST` first")
    db = sqlite3.connect(path, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM runs ORDER BY rowid")]
    finally:
        db.close()


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def _diagnostics(row: dict[str, Any]) -> dict[str, float]:
    result = _json(row.get("result_json")) or {}
    diag = result.get("diagnostics") or (_json(row.get("diagnostics_json")) or {}).get(
        "diagnostics"
    )
    return {k: float(v) for k, v in (diag or {}).items() if isinstance(v, int | float)}


def _teacher(row: dict[str, Any]) -> Teacher:
    t = Teacher(row["dataset"], row["status"], row.get("metric_name"))
    if row["status"] == "done":
        t.val, t.test = row.get("val_metric"), row.get("test_metric")
        ckpts = (_json(row.get("result_json")) or {}).get("checkpoints") or {}
        ll = (ckpts.get("ll") or {}).get("validation") or {}
        t.ll_val = ll.get(t.metric) if t.metric else None
    return t


def _manifest_axes(workdir: Path) -> dict[str, list[Any]]:
    path = workdir / "manifest.resolved.yaml"
    if not path.is_file():
        return {}
    import yaml

    m = yaml.safe_load(path.read_text()) or {}
    out = {MANIFEST_AXES.get(k, k): list(v) for k, v in (m.get("axes") or {}).items()}
    if "tau_squared" in m:
        out["tau_squared"] = [bool(m["tau_squared"])]
    return out


def _norm_option(axis: str, v: Any) -> Any:
    if axis == "tau_s":
        return given_tau_s(v)
    if axis in ("alpha", "tau_t"):
        return float(v)
    return bool(v) if axis == "tau_squared" else v


def load_study(
    path: str | Path,
    axes: dict[str, list[Any]] | None = None,
    extra_axes: tuple[str, ...] = (),
) -> Study:
    """Read `path` (a workdir or its ledger.sqlite). Axis options come from `axes`, else the
    workdir's manifest.resolved.yaml, else the ledger (first seen first); `extra_axes` are
    dotted config paths (e.g. "train.learning_rate") treated as further axes."""
    path = Path(path)
    ledger = path / "ledger.sqlite" if path.is_dir() else path
    rows = read_rows(ledger)
    declared = axes if axes is not None else _manifest_axes(ledger.parent)
    options: dict[str, list[Any]] = {a: [] for a in (*KD_AXES, *extra_axes)}
    for a, vals in declared.items():
        a = MANIFEST_AXES.get(a, a)
        options.setdefault(a, [])
        for v in vals:
            if _norm_option(a, v) not in options[a]:
                options[a].append(_norm_option(a, v))
    pairs: list[Pair] = []
    cells: dict[Pair, dict[Config, Cell]] = {}
    configs: dict[Config, None] = {}
    teachers: dict[str, Teacher] = {}
    metric: dict[str, str] = {}
    seeds: set[int] = set()
    for r in rows:
        if r.get("metric_name"):
            metric.setdefault(r["dataset"], r["metric_name"])
        if r["kind"] == "teacher":
            teachers[r["dataset"]] = _teacher(r)
            continue
        pair = (r["dataset"], r["student"])
        if pair not in cells:
            pairs.append(pair)
            cells[pair] = {}
        c = BASELINE if r["kind"] == "baseline" else config_of(r, extra_axes)
        configs.setdefault(c)
        if not c.is_baseline:
            for a in options:  # options seen in the ledger, after the declared ones
                v = c.given_value(a)
                if v is not None and v not in options[a]:
                    options[a].append(v)
        if r["status"] != "done" or r.get("val_metric") is None or r.get("test_metric") is None:
            continue
        cell = cells[pair].setdefault(c, Cell())
        seed = int(r["seed"] or 0)
        if seed in cell.test:  # the same run twice (e.g. tau_s as a number and as 'same')
            continue
        cell.val[seed], cell.test[seed] = float(r["val_metric"]), float(r["test_metric"])
        cell.diag[seed] = _diagnostics(r)
        cell.stages.add(r.get("stage") or "grid")
        seeds.add(seed)
    options = {a: v for a, v in options.items() if v}
    return Study(rows, pairs, cells, teachers, options, metric, sorted(seeds), list(configs))


def seed_table(study: Study) -> list[dict[str, Any]]:
    """Per (pair, configuration): mean and std of validation and test over seeds, n seeds."""
    out = []
    for pair in study.pairs:
        for c, cell in study.cells[pair].items():
            row = {"dataset": pair[0], "student": pair[1], "config": c.label()}
            for a in study.axes:
                row[a] = "" if c.is_baseline and a != "alpha" else c.given_value(a)
            row |= {
                "n_seeds": cell.n,
                "val_mean": cell.val_mean,
                "val_std": cell.val_std,
                "test_mean": cell.test_mean,
                "test_std": cell.test_std,
            }
            out.append(row)
    return out
