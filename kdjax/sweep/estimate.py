"""What a manifest will run, and roughly what it costs, before anything runs.

Cost is counted in example-epochs (training examples × epochs, summed over runs). Where a
ledger from an earlier sweep exists, it also gives measured seconds per example-epoch (teacher
and student runs apart: their models differ in size) and so an estimate in hours.
"""

from __future__ import annotations

import json
from pathlib import Path

from kdjax.sweep.ledger import Ledger
from kdjax.sweep.manifest import AXES, Manifest
from kdjax.sweep.plan import Planner, Run


def _file_examples(data: dict) -> int | None:
    """Rows in a local CSV/TSV/JSONL train file (other formats: unknown)."""
    path = Path((data.get("files") or {}).get("train", ""))
    if data.get("source") != "files" or path.suffix not in (".csv", ".tsv", ".jsonl"):
        return None
    try:
        n = sum(1 for line in path.open() if line.strip())
    except OSError:
        return None
    return n - 1 if path.suffix in (".csv", ".tsv") else n


def _measured(ledger: Ledger | None) -> tuple[dict[str, int], dict[str, tuple[float, int]]]:
    """Train-set sizes seen per dataset, and seconds per example-epoch per role."""
    sizes: dict[str, int] = {}
    spent: dict[str, list[float]] = {"teacher": [0.0, 0.0, 0], "student": [0.0, 0.0, 0]}
    if ledger is None:
        return sizes, {}
    for row in ledger.rows(status="done"):
        result = json.loads(row["result_json"] or "{}")
        n = ((result.get("data") or {}).get("examples") or {}).get("train")
        epochs = json.loads(row["config_json"])["train"]["epochs"]
        if not n or result.get("train_time_s") is None:
            continue
        sizes[row["dataset"]] = n
        acc = spent["teacher" if row["kind"] == "teacher" else "student"]
        acc[0] += result["train_time_s"]
        acc[1] += n * epochs
        acc[2] += 1
    return sizes, {k: (s / ee, c) for k, (s, ee, c) in spent.items() if ee}


def describe_plan(
    m: Manifest,
    workdir: str | Path,
    hardware: str | Path | None = None,
    chips: int = 1,
    examples: dict[str, int] | None = None,
) -> str:
    """Run counts (per greedy stage: at most), logit caches and the estimated cost; with
    `hardware` (a benchmarks/accelerator.py results file) also the projected chip-hours.
    `examples` gives training-set sizes (dataset name: rows) where they are not known."""
    planner = Planner(m, workdir)
    pairs, seeds = planner.pairs(), len(m.seeds)
    teachers = list(planner.teachers.values())
    lines = [
        f"study {m.name!r}: {len(planner.datasets)} dataset(s) x {len(planner.students)} student(s)"
        f" = {len(pairs)} pairs, {seeds} seed(s), search {m.search.strategy}",
        f"teacher runs: {len(teachers)} (one per dataset, seed {m.seeds[0]})",
    ]
    kd_alphas = [a for a in m.axes.alpha if a > 0]
    caches = len(planner.datasets) * len(m.axes.teacher) if kd_alphas else 0
    if m.teacher_mode == "cached":
        lines.append(f"logit caches: {caches} (dataset x teacher checkpoint, built on first use)")
    else:
        lines.append("logit caches: none (teacher_mode online)")
    # Student runs per dataset, for the cost: exact for grid, an upper bound for greedy.
    per_dataset: dict[str, int] = {d: 0 for d in planner.datasets}
    if m.search.strategy == "grid":
        runs = planner.grid()
        n_kd = sum(r.kind == "distill" for r in runs)
        n_base = len(runs) - n_kd
        lines.append(f"student runs: {n_kd} distillation + {n_base} no-KD baselines = {len(runs)}")
        for r in runs:
            per_dataset[r.dataset] += 1
        total = len(runs)
    else:
        base = len(pairs) * seeds * len(m.baseline_lrs())
        counts = [len(pairs) * seeds]
        for axis in m.order():
            counts.append(len(pairs) * seeds * (len(getattr(m.axes, axis)) - 1))
        labels = planner.stage_labels()
        if m.search.sensitivity_on():
            labels.append("sensitivity")
            # The last stage already ran the optimum's neighbours along the last axis.
            near = sum(len(getattr(m.axes, a)) - 1 for a in m.order()[:-1])
            counts.append(len(pairs) * seeds * near)
        if m.search.transfer_on():
            labels.append("transfer")
            counts.append(len(pairs) * seeds * (m.search.transfer_top_k + 2))
        lines.append("greedy stages (new runs, at most; runs shared with earlier stages reused):")
        for label, n in zip(labels, counts, strict=True):
            lines.append(f"  {label:<12} {n}")
        lines.append(f"  baselines    {base}")
        total = sum(counts) + base
        lines.append(
            f"student runs: at most {total} (a full grid: {_grid_size(m)} KD runs + baselines)"
        )
        for d in per_dataset:
            per_dataset[d] = total // max(len(planner.datasets), 1)
    g = m.executor.group_size
    if g > 1 and m.teacher_mode == "cached":
        lines.append(
            f"grouped training: up to {g} runs of one dataset, student and seed train together "
            "(executor.group_size; fewer where memory is short)"
        )
    else:
        why = "teacher_mode online" if g > 1 else "executor.group_size 1"
        lines.append(f"grouped training: off ({why}); every run trains alone")
    ledger_path = Path(workdir) / "ledger.sqlite"
    ledger = Ledger(ledger_path) if ledger_path.is_file() else None
    try:
        sizes, rate = _measured(ledger)
    finally:
        if ledger is not None:
            ledger.close()
    sizes = {**sizes, **(examples or {})}
    if m.trainer is not None:
        lines.append(f"trainer: {m.trainer} (plug-in; kdjax loads no model and no data)")
        lines += _plugin_cost(ledger_path, total + len(teachers))
    else:
        lines += _cost(planner, teachers, per_dataset, sizes, rate)
    if hardware is not None:
        from kdjax.sweep.projection import Hardware, format_projection, project

        known = {t.dataset: _train_size(planner, t, sizes) for t in teachers}
        sizes = {k: v for k, v in known.items() if v is not None}
        per_pair = None if m.search.strategy == "grid" else total // max(len(pairs), 1)
        hw = Hardware.load(hardware)
        lines += format_projection(project(m, workdir, hw, chips, sizes, per_pair))
    lines += [f"warning: {w}" for w in m.warnings()]
    return "\n".join(lines)


def _train_size(planner: Planner, t: Run, sizes: dict[str, int]) -> int | None:
    d = planner.datasets[t.dataset]
    limit = d.data.get("limit", {}).get("train")
    return sizes.get(d.name) or _min(limit, _file_examples(d.data))


def _plugin_cost(ledger_path: Path, runs: int) -> list[str]:
    """A plug-in trainer's runs are opaque: the estimate is the mean measured run time."""
    if not ledger_path.is_file():
        return ["estimated time: unknown until a ledger in the workdir has finished runs"]
    with Ledger(ledger_path) as ledger:
        times = [r["wall_time_s"] for r in ledger.rows(status="done") if r["wall_time_s"]]
    if not times:
        return ["estimated time: unknown until a ledger in the workdir has finished runs"]
    per = sum(times) / len(times)
    return [f"estimated time: {runs * per / 60:.1f} min ({per:.2f} s per run over "
            f"{len(times)} finished runs)"]  # fmt: skip


def _grid_size(m: Manifest) -> int:
    n = 1
    for a in AXES:
        n *= len(getattr(m.axes, a))
    return n * len(m.datasets) * len(m.students) * len(m.seeds)


def _cost(planner: Planner, teachers: list[Run], per_dataset, sizes, rate) -> list[str]:
    unknown: list[str] = []
    ee = {"teacher": 0, "student": 0}
    for t in teachers:
        d = planner.datasets[t.dataset]
        n = _train_size(planner, t, sizes)
        if n is None:
            unknown.append(d.name)
            continue
        ee["teacher"] += n * t.config.train.epochs
        epochs = planner.m.train_for(d.task).get("epochs", 3)
        ee["student"] += n * epochs * per_dataset[d.name]
    if len(unknown) == len(teachers):
        return [
            "cost: unknown until the training-set sizes are known (set data.limit.train, or "
            "plan again with --workdir of a sweep that has run)"
        ]
    lines = [
        f"cost: {ee['teacher']:,} teacher + {ee['student']:,} student example-epochs"
        + (f" (not counting {', '.join(unknown)}: train size unknown)" if unknown else "")
    ]
    if rate:
        secs = sum(ee[k] * rate[k][0] for k in ee if k in rate)
        how = ", ".join(f"{k} {rate[k][0] * 1e3:.2f} s per 1k ({rate[k][1]} runs)" for k in rate)
        took = f"{secs / 3600:.1f} h" if secs >= 3600 else f"{secs / 60:.1f} min"
        lines.append(f"estimated time: {took} of training (measured in the ledger: {how})")
    else:
        lines.append("estimated time: unknown until a ledger in the workdir has finished runs")
    return lines


def _min(a: int | None, b: int | None) -> int | None:
    vals = [v for v in (a, b) if v is not None]
    return min(vals) if vals else None
