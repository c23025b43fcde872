"""A study's chip-hours and wall time, projected from figures measured on a chip.

`kdjax plan MANIFEST --hardware RESULTS.json [--chips N]` reads what
`benchmarks/accelerator.py` wrote (student steps, the grouped step, the teacher's pass and
train step, each with its compile time) and adds up, per run: steps × step time, evaluation
and compilation; per dataset: the teacher's fine-tuning and its cached logits. Where the study
needs a shape that was not measured, the nearest measured one is scaled (per token, linearly)
and the line says so; a student size that was not measured at all is reported, not guessed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdjax.sweep.manifest import Manifest
from kdjax.sweep.plan import Planner, Run

# A forward pass costs about a third of a forward and backward pass (2 of 6 FLOPs per
# parameter and token): evaluation is projected at 1/3 of a train step per example.
EVAL_FRACTION = 1 / 3
PARTS = ("teacher fine-tuning", "teacher logits", "student training", "evaluation", "compilation")


def _arch_key(cfg) -> str:
    from kdjax.training.compile_check import _student_arch, architecture

    arch = _student_arch(cfg) if cfg.teacher else architecture(cfg.model.path)
    return f"L{arch.num_layers}/H{arch.hidden_size}"


@dataclass
class Hardware:
    device: str
    rows: list[dict[str, Any]]
    path: str

    @classmethod
    def load(cls, path: str | Path) -> Hardware:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"--hardware: cannot read {path}: {e}") from None
        rows = raw.get("rows") if isinstance(raw, dict) else None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError(
                f"--hardware: {path} is not a benchmarks/accelerator.py results file "
                "(expected {device, rows: [...]})"
            )
        ok = [r for r in rows if "error" not in r and "skipped" not in r and r.get("step_s")]
        if not any(r.get("bench") == "student_step" for r in ok):
            raise ValueError(f"--hardware: {path} has no measured student_step rows")
        return cls(str(raw.get("device", "?")), ok, str(path))

    def _pick(self, bench: str, model: str | None, seq: int, dtype: str | None):
        """(row, per-example seconds at `seq`, note) for the nearest measured sequence
        length (at or above `seq` first), scaled linearly in tokens."""
        rows = [
            r
            for r in self.rows
            if r["bench"] == bench
            and (model is None or r.get("model") == model)
            and (dtype is None or r.get("dtype") == dtype)
        ]
        if not rows:
            return None
        above = [r for r in rows if r["seq"] >= seq]
        row = min(above, key=lambda r: r["seq"]) if above else max(rows, key=lambda r: r["seq"])
        per_example = row["step_s"] / row["batch"] * seq / row["seq"]
        note = "" if row["seq"] == seq else f"{bench} {row.get('model')} seq {row['seq']}->{seq}"
        return row, per_example, note

    def group_factor(self, k: int) -> tuple[float, int]:
        """Time per member-step in a group of (the largest measured size <=) k, relative to
        training alone; (1.0, 1) without grouped measurements."""
        rows = {r["group_size"]: r for r in self.rows if r["bench"] == "grouped"}
        if 1 not in rows or k <= 1:
            return 1.0, 1
        size = max(s for s in rows if s <= k)
        return rows[size]["step_s"] / size / rows[1]["step_s"], size


def _rows(d, n: int | None) -> tuple[int, int] | None:
    """(train rows, validation + test rows) of a dataset with `n` training rows."""
    if n is None:
        return None
    val = max(1, round(n * d.data.get("split", {}).get("validation", 0.1)))
    return n, 2 * val  # test taken as large as validation


def _student_runs(planner: Planner, per_pair: int | None) -> list[tuple[Run, int]]:
    """One representative run per pair and how many runs of it the plan makes (exact for a
    grid; for greedy `per_pair`, the most it can, or counted from the axes)."""
    m = planner.m
    if per_pair is not None:
        counts = {p: per_pair for p in planner.pairs()}
    elif m.search.strategy == "grid":
        counts: dict[tuple[str, str], int] = {}
        for r in planner.grid():
            counts[r.pair] = counts.get(r.pair, 0) + 1
    else:
        per_pair = len(m.seeds) * (1 + sum(len(getattr(m.axes, a)) - 1 for a in m.order()))
        per_pair += len(m.seeds) if m.baseline else 0
        counts = {p: per_pair for p in planner.pairs()}
    seed = m.seeds[0]
    return [(planner.baseline(d, s, seed), n) for (d, s), n in counts.items()]


def project(
    m: Manifest,
    workdir: str | Path,
    hw: Hardware,
    chips: int,
    sizes: dict[str, int],
    per_pair: int | None = None,
) -> dict[str, Any]:
    """Chip-hours per part (`hours`), `total`, `wall_h` on `chips`, the `dominant` part, and
    what was scaled (`notes`) or could not be projected (`missing`)."""
    if chips < 1:
        raise ValueError(f"--chips: must be >= 1, got {chips}")
    planner = Planner(m, workdir)
    hours = dict.fromkeys(PARTS, 0.0)
    notes: set[str] = set()
    missing: set[str] = set()
    longest_teacher = longest_student = 0.0
    ckpts = len(m.axes.teacher) if any(a > 0 for a in m.axes.alpha) else 0
    for name, t in planner.teachers.items():
        d, cfg = planner.datasets[name], t.config
        n = _rows(d, sizes.get(name))
        if n is None:
            missing.add(f"dataset {name}: train size unknown")
            continue
        seq = cfg.data.max_length
        dtype = cfg.train.compute_dtype  # the teacher's own rows, else another dtype's
        step = hw._pick("teacher_step", None, seq, dtype) or hw._pick(
            "teacher_step", None, seq, None
        )
        fwd = hw._pick("teacher_pass", None, seq, dtype) or hw._pick(
            "teacher_pass", None, seq, None
        )
        if step is None or fwd is None:
            missing.add("teacher_step / teacher_pass not measured")
            continue
        notes.update(x for x in (step[2], fwd[2]) if x)
        per_ex = step[1]
        steps = math.ceil(n[0] / cfg.train.batch_size) * cfg.train.epochs
        train = steps * cfg.train.batch_size * per_ex
        evals = (cfg.train.epochs * n[1] / 2 + n[1] / 2) * per_ex * EVAL_FRACTION
        logits = ckpts * (n[0] + n[1]) * fwd[1]
        compile_s = step[0].get("compile_s", 0.0) + fwd[0].get("compile_s", 0.0)
        hours["teacher fine-tuning"] += train / 3600
        hours["teacher logits"] += logits / 3600
        hours["evaluation"] += evals / 3600
        hours["compilation"] += compile_s / 3600
        longest_teacher = max(longest_teacher, train + evals + logits + compile_s)
    group = m.executor.group_size if m.teacher_mode == "cached" else 1
    factor, measured_k = hw.group_factor(group)
    if group > 1:
        notes.add(f"grouped: {group} per group, member-step time x{factor:.2f} (measured K="
                  f"{measured_k}, L4/H256; applied to every student)")  # fmt: skip
    for run, count in _student_runs(planner, per_pair):
        cfg, d = run.config, planner.datasets[run.dataset]
        n = _rows(d, sizes.get(run.dataset))
        if n is None:
            continue
        key, seq, tc = _arch_key(cfg), cfg.data.max_length, cfg.train
        pick = hw._pick("student_step", key, seq, tc.compute_dtype)
        if pick is None:
            missing.add(f"student {run.student} ({key}, {tc.compute_dtype}): not measured")
            continue
        row, per_ex, note = pick
        notes.update([note] if note else [])
        steps = math.ceil(n[0] / tc.batch_size) * tc.epochs
        train = steps * tc.batch_size * per_ex * factor
        evals = (tc.epochs * n[1] / 2 + n[1] / 2) * per_ex * EVAL_FRACTION
        compile_s = row.get("compile_s", 0.0)
        hours["student training"] += count * train / 3600
        hours["evaluation"] += count * evals / 3600
        # JAX's persistent compilation cache (on by default, kdjax.cli) compiles a pair's
        # step once per loss: each distance, and the no-KD loss; the KD numbers are inputs.
        programs = min(count, len(m.axes.distance) + 1)
        hours["compilation"] += programs * compile_s / 3600
        longest_student = max(longest_student, train + evals + compile_s)
    total = sum(hours.values())
    return {
        "device": hw.device,
        "path": hw.path,
        "chips": chips,
        "hours": hours,
        "total": total,
        "wall_h": max(total / chips, (longest_teacher + longest_student) / 3600),
        "dominant": max(PARTS, key=lambda p: hours[p]),
        "notes": sorted(notes),
        "missing": sorted(missing),
    }


def format_projection(p: dict[str, Any]) -> list[str]:
    lines = [f"projection from {p['path']} ({p['device']}), {p['chips']} chip(s):"]
    for part, h in p["hours"].items():
        share = h / p["total"] if p["total"] else 0.0
        lines.append(f"  {part:<20} {h:10.2f} chip-h  ({share:.0%})")
    lines.append(
        f"  {'total':<20} {p['total']:10.2f} chip-h; wall time about {p['wall_h']:.2f} h on "
        f"{p['chips']} chip(s); {p['dominant']} dominates"
    )
    lines.append(
        "  (runs packed perfectly over the chips, a teacher before its students; greedy: "
        "every stage at its most runs; evaluation at 1/3 of a train step per example; "
        "test split taken as large as validation; a student step compiled once per pair and "
        "loss, the persistent compilation cache shared by the workers)"
    )
    lines += [f"  scaled: {n}" for n in p["notes"]]
    lines += [f"  not projected: {n}" for n in p["missing"]]
    return lines


def parse_sizes(items: list[str] | None) -> dict[str, int]:
    """`NAME=ROWS` pairs (from `--examples`) as a mapping."""
    out = {}
    for item in items or []:
        name, _, rows = item.partition("=")
        if not name or not rows.isdigit() or int(rows) < 1:
            raise ValueError(f"--examples: expected NAME=ROWS with ROWS >= 1, got {item!r}")
        out[name] = int(rows)
    return out
