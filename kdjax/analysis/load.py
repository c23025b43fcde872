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


@dataclass(frozen=True)
class Outcomes:
    """Per-example test outcomes of one run: `values[i]` for example `ids[i]` (mean = the test
    metric: 0/1 for accuracy, per-question F1), or `counts[i] = (tp, n_pred, n_gold)` for a
    corpus F1 computed from summed counts."""

    ids: tuple[str, ...]
    values: np.ndarray | None  # [n] float
    counts: np.ndarray | None = None  # [n, 3] float

    @property
    def n(self) -> int:
        return len(self.ids)

    def metric(self, weights: np.ndarray | None = None) -> np.ndarray | float:
        """The metric; with `weights` [B, n] (resampled examples) one value per row."""
        if self.counts is not None:
            tp, pred, gold = self.counts.sum(0) if weights is None else (weights @ self.counts).T
            return 2 * tp / np.maximum(pred + gold, 1e-12)
        if weights is None:
            return float(np.mean(self.values))
        return weights @ self.values / weights.sum(axis=1)


def outcomes_of(result: dict[str, Any]) -> Outcomes | None:
    """The per-example outcomes in a run's result (`test_outcomes`, or a plug-in trainer's
    `test_correct` list); None when absent or malformed."""
    raw = result.get("test_outcomes")
    if raw is None and isinstance(result.get("test_correct"), list):
        raw = {"values": result["test_correct"]}
    if not isinstance(raw, dict):
        return None
    values, counts = raw.get("values"), raw.get("counts")
    try:
        v = None if values is None else np.asarray(values, dtype=float).reshape(-1)
        c = None if counts is None else np.asarray(counts, dtype=float).reshape(-1, 3)
    except (TypeError, ValueError):
        return None
    n = len(c) if c is not None else (len(v) if v is not None else 0)
    if not n or (v is not None and c is not None and len(v) != len(c)):
        return None
    ids = raw.get("ids")
    if isinstance(ids, list) and len(ids) == n:
        ids = tuple(ids) if isinstance(ids[0], str) else tuple(map(str, ids))
    else:
        ids = None
    return Outcomes(ids or tuple(map(str, range(n))), v, c)


@dataclass
class Cell:
    """The finished seeds of one configuration on one pair."""

    val: dict[int, float] = field(default_factory=dict)
    test: dict[int, float] = field(default_factory=dict)
    diag: dict[int, dict[str, float]] = field(default_factory=dict)
    stages: set[str] = field(default_factory=set)
    outcomes: dict[int, Outcomes] = field(default_factory=dict)  # per seed, when recorded
    order: int = 0  # the ledger position of its latest run

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
    hs_epoch: int | None = None
    ll_epoch: int | None = None

    @property
    def same_checkpoint(self) -> bool:
        """hs and ll are the same epoch: distilling from either is the same run."""
        return self.hs_epoch is not None and self.hs_epoch == self.ll_epoch


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
    baselines: dict[Pair, dict[float | None, Cell]] = field(default_factory=dict)  # by lr
    strategy: str = "grid"  # grid | greedy (from the manifest, else the stage labels)
    default: dict[str, Any] = field(default_factory=dict)  # axis -> first option
    manifest: dict[str, Any] = field(default_factory=dict)  # manifest.resolved.yaml, if any

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
        """The untuned no-KD baseline: trained with the KD runs' own learning rate."""
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


def _json(text: str | dict | None) -> Any:
    """A JSON column's value (rows built in memory may hold the dict itself)."""
    if isinstance(text, dict):
        return text
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def _diagnostics(row: dict[str, Any], result: dict[str, Any]) -> dict[str, float]:
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
        epochs = [(ckpts.get(k) or {}).get("epoch") for k in ("hs", "ll")]
        t.hs_epoch, t.ll_epoch = (int(e) if isinstance(e, int | float) else None for e in epochs)
    return t


def _manifest(workdir: Path) -> dict[str, Any]:
    path = workdir / "manifest.resolved.yaml"
    if not path.is_file():
        return {}
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def _manifest_axes(m: dict[str, Any]) -> dict[str, list[Any]]:
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
    return study_from_rows(read_rows(ledger), _manifest(ledger.parent), axes, extra_axes)


def study_from_rows(
    rows: list[dict[str, Any]],
    manifest: dict[str, Any] | None = None,
    axes: dict[str, list[Any]] | None = None,
    extra_axes: tuple[str, ...] = (),
) -> Study:
    """A study from ledger rows (dicts with the ledger's columns), as `load_study` reads them."""
    manifest = manifest or {}
    declared = axes if axes is not None else _manifest_axes(manifest)
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
    baselines: dict[Pair, dict[float | None, Cell]] = {}
    kd_lr: dict[Pair, float | None] = {}
    lrs = [_lr(r) if r["kind"] != "teacher" else None for r in rows]
    for r, lr in zip(rows, lrs, strict=True):  # the KD runs' learning rate: the untuned baseline's
        if r["kind"] == "distill":
            kd_lr.setdefault((r["dataset"], r["student"]), lr)
    for k, r in enumerate(rows):
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
        if c.is_baseline and pair in kd_lr and lrs[k] != kd_lr[pair]:
            c = None  # a tuned baseline (another learning rate): kept apart
        if c is not None:
            configs.setdefault(c)
        if c is not None and not c.is_baseline:
            for a in options:  # options seen in the ledger, after the declared ones
                v = c.given_value(a)
                if v is not None and v not in options[a]:
                    options[a].append(v)
        if r["status"] != "done" or r.get("val_metric") is None or r.get("test_metric") is None:
            continue
        result = _json(r.get("result_json")) or {}
        if r["kind"] == "baseline":
            _add(baselines.setdefault(pair, {}).setdefault(lrs[k], Cell()), r, k, result)
        if c is not None:
            seeds.add(_add(cells[pair].setdefault(c, Cell()), r, k, result))
    options = {a: v for a, v in options.items() if v}
    for alias, runs_as in _shared(manifest, options).items():
        _alias_distance(cells, configs, runs_as, alias)
    stages = {str(r.get("stage") or "") for r in rows}
    strategy = (manifest.get("search") or {}).get("strategy") or (
        "greedy" if any(s[:1].isdigit() for s in stages) else "grid"
    )
    default = {a: v[0] for a, v in options.items()}
    return Study(
        rows, pairs, cells, teachers, options, metric, sorted(seeds), list(configs),
        baselines, strategy, default, manifest,
    )  # fmt: skip


def _shared(manifest: dict[str, Any], options: dict[str, list[Any]]) -> dict[str, str]:
    """`search.equivalent_distances: share`: the second of ce and kl listed is run as the
    first (one run under both names); {alias: distance run}."""
    if (manifest.get("search") or {}).get("equivalent_distances") != "share":
        return {}
    listed = [d for d in options.get("distance", []) if d in ("ce", "kl")]
    return {listed[1]: listed[0]} if len(listed) == 2 else {}


def _alias_distance(
    cells: dict[Pair, dict[Config, Cell]], configs: dict[Config, None], runs_as: str, alias: str
) -> None:
    """Every configuration with distance `runs_as` also stands for `alias`: the same cell."""
    for by_config in cells.values():
        for c, cell in list(by_config.items()):
            if c.is_baseline or c["distance"] != runs_as:
                continue
            swap = {**dict(c.items), "distance": alias}
            given = {**dict(c.given or c.items), "distance": alias}
            twin = Config(tuple(swap.items()), tuple(given.items()))
            by_config.setdefault(twin, cell)
            configs.setdefault(twin)


def _lr(row: dict[str, Any]) -> float | None:
    lr = ((_json(row.get("config_json")) or {}).get("train") or {}).get("learning_rate")
    return float(lr) if isinstance(lr, int | float) else None


def _add(cell: Cell, r: dict[str, Any], order: int, result: dict[str, Any]) -> int:
    """Add a finished run's seed to `cell`; returns the seed."""
    seed = int(r["seed"] or 0)
    if seed in cell.test:  # the same run twice (e.g. tau_s as a number and as 'same')
        return seed
    cell.val[seed], cell.test[seed] = float(r["val_metric"]), float(r["test_metric"])
    cell.diag[seed] = _diagnostics(r, result)
    cell.stages.add(r.get("stage") or "grid")
    cell.order = max(cell.order, order)
    out = outcomes_of(result)
    if out is not None:
        cell.outcomes[seed] = out
    return seed


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
