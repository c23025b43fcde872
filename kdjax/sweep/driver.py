"""The sweep driver: manifest → plan → teacher runs → distillation runs → report.

The ledger is the source of truth: a run is done only once its result is in the ledger, done
runs are never run again, and a driver killed at any point resumes by running the same command.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import itertools
import json
import logging
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from kdjax.sweep.executors import Executor, Group, RunFn, Task, make_executor
from kdjax.sweep.ledger import Ledger
from kdjax.sweep.manifest import AXES, Manifest, load_manifest
from kdjax.sweep.plan import Pair, Planner, Point, Run, Stage, choose, unique
from kdjax.sweep.storage import LedgerPlace, check_workdir
from kdjax.sweep.summary import pair_table

log = logging.getLogger(__name__)


def default_workdir(m: Manifest) -> Path:
    return Path("runs") / "sweeps" / m.name


def memory_budget(gb: float | None, executor: Executor) -> int:
    """Bytes one group may use: `gb` when given; else what one task's slot offers, measured
    where the task runs (the local device, or a probe task on a Ray worker: the slot's device
    memory, not the driver host's RAM)."""
    if gb:
        return int(gb * 2**30)
    return executor.slot_memory()


def plan_tasks(runs: list[Run], group_size: int, budget: Callable[[], int]) -> list[Task | Group]:
    """Runs as tasks: with `group_size` > 1, runs that can train together (`group_key`) form
    groups of at most `group_size` members, fewer where the memory estimate for one member
    (`max_group_size` of `budget()` bytes) says so, split evenly; every other run is alone."""
    task = lambda r: Task(r.run_id, r.config.model_dump_json(), r.config.output_dir)
    if group_size <= 1:
        return [task(r) for r in runs]
    from kdjax.training.grouped import group_key, max_group_size

    buckets: dict[tuple, list[Run]] = {}
    for r in runs:
        buckets.setdefault(group_key(r.config), []).append(r)
    out: list[Task | Group] = []
    for key, rs in buckets.items():
        cap = 1
        if key[0] == "group" and len(rs) > 1:
            try:
                cap = max_group_size(rs[0].config, budget(), group_size)
            except (OSError, ValueError) as e:  # e.g. the student's checkpoint not visible here
                log.warning("no memory estimate for a group (%s); groups of %d", e, group_size)
                cap = group_size
        chunks = math.ceil(len(rs) / cap)
        q, extra = divmod(len(rs), chunks)  # sizes differ by at most one
        start = 0
        for i in range(chunks):
            part = [task(r) for r in rs[start : start + q + (i < extra)]]
            start += len(part)
            out.append(part[0] if len(part) == 1 else Group(tuple(part)))
    return out


class _Sweep:
    """Executes batches of runs against the ledger, skipping what is already settled."""

    def __init__(
        self,
        ledger: Ledger,
        executor: Executor,
        retry_failed: bool,
        progress: bool,
        group_size: int = 1,
        memory_gb: float | None = None,
    ):
        self.ledger, self.executor, self.retry_failed = ledger, executor, retry_failed
        self.group_size = group_size
        self._budget = functools.cache(lambda: memory_budget(memory_gb, executor))
        self.seen: set[str] = set()
        self.attempted: set[str] = set()  # runs dispatched by this invocation
        self.done = self.failed = 0
        self.bar = tqdm(total=0, unit="run", desc="sweep", disable=not progress)
        self.publish: Callable[..., bool] = lambda force=False: False

    def _bar(self, done: int = 0, failed: int = 0, quiet: bool = False) -> None:
        self.done += done
        self.failed += failed
        if quiet:  # settled before this invocation: counted without skewing the ETA
            self.bar.n += done + failed
            self.bar.last_print_n = self.bar.n
            self.bar.refresh()
        else:
            self.bar.update(done + failed)
        self.bar.set_postfix(done=self.done, failed=self.failed)

    def execute(self, runs: list[Run]) -> None:
        runs = unique(runs)
        self.ledger.upsert_pending(runs)
        new = {r.run_id for r in runs} - self.seen
        self.seen |= new
        self.bar.total += len(new)
        status = self.ledger.status_of([r.run_id for r in runs])
        teachers = self.ledger.fetch({r.teacher_run for r in runs if r.teacher_run}, "status")
        todo: list[Run] = []
        for r in runs:
            st = status[r.run_id]
            fresh = r.run_id in new
            if st == "done":
                self._bar(done=int(fresh), quiet=True)
            elif st == "failed" and (not self.retry_failed or r.run_id in self.attempted):
                self._bar(failed=int(fresh), quiet=True)
            elif r.teacher_run and teachers.get(r.teacher_run, {}).get("status") != "done":
                t = self.ledger.get(r.teacher_run) or {"status": "missing"}
                self.ledger.mark_failed(
                    r.run_id,
                    f"TeacherNotDone: teacher run {r.teacher_run} for dataset {r.dataset!r} is "
                    f"{t['status']}; not attempted (rerun with --retry-failed once it is fixed)",
                )
                self._bar(failed=int(fresh))
            else:
                todo.append(r)
        if not todo:
            return
        self.attempted.update(r.run_id for r in todo)
        tasks = plan_tasks(todo, self.group_size, self._budget)
        same: list[str] = []  # runs after the last printed failure that failed the same way
        last = None
        for out in self.executor.run(tasks, self.ledger.mark_running):
            self.publish()
            if out.ok:
                self.ledger.mark_done(out.run_id, out.payload, out.attempts - 1)
                self._bar(done=1)
                continue
            self.ledger.mark_failed(out.run_id, out.payload, out.attempts - 1)
            head = out.payload.splitlines()[0]
            if head == last:  # e.g. every member of a group that raised: one line for all
                same.append(out.run_id)
            else:
                self._same_way(same)
                self.bar.write(f"run {out.run_id} failed: {head}")
                same, last = [], head
            self._bar(failed=1)
        self._same_way(same)

    def _same_way(self, runs: list[str]) -> None:
        if runs:
            self.bar.write(f"  and {len(runs)} more run(s) the same way: {', '.join(runs)}")

    def close(self) -> None:
        self.bar.close()


def _val_scores(ledger: Ledger, run_ids) -> dict[str, float]:
    """Validation metric of the finished runs among `run_ids`."""
    rows = ledger.fetch(set(run_ids), "status", "val_metric")
    return {
        i: r["val_metric"]
        for i, r in rows.items()
        if r["status"] == "done" and r["val_metric"] is not None
    }


def _entry(stage: Stage, best: dict[Pair, Point], **extra: Any) -> dict[str, Any]:
    """One stage in `search.json`: per pair, the chosen point and every option's run ids."""
    key = "/".join
    options = {key(p): [[list(pt), ids] for pt, ids in o.items()] for p, o in stage.options.items()}
    return {"stage": stage.label, "best": {key(p): v for p, v in best.items()},
            "options": options, **extra}  # fmt: skip


def run_stage(
    sweep: _Sweep, ledger: Ledger, stage: Stage, best: dict[Pair, Point]
) -> dict[Pair, Point]:
    """Execute a stage's runs and choose, per pair, its best option on validation (ties keep
    `best[pair]`); a pair none of whose options finished drops out."""
    sweep.execute(stage.runs)
    scores = _val_scores(ledger, [r.run_id for r in stage.runs])
    chosen: dict[Pair, Point] = {}
    for pair, options in stage.options.items():
        point = choose(options, scores, best.get(pair))
        if point is None:
            sweep.bar.write(
                f"{pair[0]}/{pair[1]}: no run of stage {stage.label} finished; "
                "this pair is not searched further"
            )
        else:
            chosen[pair] = point
    return chosen


def after_search(
    planner: Planner, sweep: _Sweep, ledger: Ledger, best: dict[Pair, Point]
) -> tuple[list[Run], list[dict[str, Any]]]:
    """The stages after the search: sensitivity (one knob at a time around each pair's
    optimum; greedy) then transfer (candidate single configurations on every pair). Returns
    their runs and their `search.json` entries. `best`: each pair's optimum."""
    runs: list[Run] = []
    history: list[dict[str, Any]] = []
    search = planner.m.search
    winners = best
    if search.strategy == "greedy" and search.sensitivity_on():
        stage = planner.sensitivity_stage(best)
        winners = run_stage(sweep, ledger, stage, best)
        runs += stage.runs
        local = {"/".join(p): winners.get(p) == best[p] for p in best}
        history.append(_entry(stage, winners, optimum=local))
    if search.transfer_on() and winners:
        done = ledger.rows(status="done", kind=["distill", "baseline"])
        scores = {r["run_id"]: r["val_metric"] for r in done if r["val_metric"] is not None}
        candidates = planner.transfer_candidates(winners, scores)
        stage = planner.transfer_stage(candidates)
        sweep.execute(stage.runs)
        runs += stage.runs
        cands = [{"config": list(p), "why": why} for p, why in candidates]
        history.append(_entry(stage, winners, candidates=cands))
    return runs, history


def _greedy(planner: Planner, sweep: _Sweep, ledger: Ledger, workdir: Path) -> list[str]:
    """Stage by stage, each stage's options per pair chosen on mean validation score; then
    the sensitivity and transfer stages (`after_search`)."""
    best: dict[Pair, Point] = {pair: planner.default_point() for pair in planner.pairs()}
    planned: list[str] = []
    history = []
    for k in range(len(planner.m.order()) + 1):
        stage = planner.greedy_stage(k, best)
        best = run_stage(sweep, ledger, stage, best)
        planned += [r.run_id for r in stage.runs]
        history.append(_entry(stage, best))
    runs, more = after_search(planner, sweep, ledger, best)
    planned += [r.run_id for r in runs]
    (workdir / "search.json").write_text(json.dumps(history + more, indent=1) + "\n")
    return planned


def _grid(planner: Planner, sweep: _Sweep, ledger: Ledger, workdir: Path) -> list[str]:
    """Every configuration everywhere; with `search.transfer`, the candidate single
    configurations recorded too (all ran already)."""
    runs = planner.grid()
    sweep.execute(runs)
    planned = [r.run_id for r in runs]
    if planner.m.search.transfer_on():
        stage = Stage("grid", None)
        values = [getattr(planner.m.axes, a) for a in AXES]
        for pair in planner.pairs():
            stage.options[pair] = {}
            for point in itertools.product(*values):
                stage.options[pair][point] = planner._ids(pair, point)
        best = run_stage(sweep, ledger, stage, {})
        more_runs, more = after_search(planner, sweep, ledger, best)
        planned += [r.run_id for r in more_runs]
        (workdir / "search.json").write_text(json.dumps(more, indent=1) + "\n")
    return planned


def _report(workdir: Path) -> None:
    try:
        found = importlib.util.find_spec("kdjax.analysis.report") is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        return
    from kdjax.analysis.report import write_report  # lands with the analysis package

    try:
        write_report(workdir)
    except Exception as e:  # noqa: BLE001 - the runs are recorded; the report can be redone
        print(f"warning: report failed ({type(e).__name__}: {e})", file=sys.stderr)


@contextlib.contextmanager
def _driver_lock(workdir: Path):
    # Only one driver may write a ledger; the OS drops the lock when a driver dies, even by
    # SIGKILL, so a stale lock never blocks a resume.
    with open(workdir / "driver.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise RuntimeError(
                f"another driver (pid {f.read().strip() or '?'}) is running the sweep in "
                f"{workdir}; wait for it or stop it first"
            ) from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        yield


@contextlib.contextmanager
def _restored(place: LedgerPlace):
    if place.restore():
        print(f"ledger restored from the snapshot {place.shared}")
    yield


def run_study(
    manifest_path: str | Path,
    workdir: str | Path | None = None,
    executor: Executor | str | None = None,
    address: str | None = None,
    retry_failed: bool = False,
    run_fn: RunFn | None = None,
    progress: bool = True,
    group_size: int | None = None,
    report: bool = True,
    resources: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Run (or resume) the study in `manifest_path`; returns the workdir and run counts.

    `executor`: an Executor, or "local"/"ray" to override the manifest's kind; `run_fn`
    replaces the trainer (a module-level function taking a config JSON string; default: the
    manifest's plug-in `trainer`, else kdjax's);
    `group_size` overrides the manifest's `executor.group_size`; `report`: write the
    report when the sweep ends; `resources` (Ray) the per-task request, e.g. {"GPU": 0.5} or
    {"TPU": 1}."""
    if group_size is not None and group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    m = load_manifest(manifest_path)
    if workdir:
        check_workdir(workdir)
    workdir = Path(workdir) if workdir else default_workdir(m)
    workdir.mkdir(parents=True, exist_ok=True)
    place = LedgerPlace(workdir)
    resolved = {"root": str(m.root), **m.model_dump(mode="json")}
    (workdir / "manifest.resolved.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    planner = Planner(m, workdir)
    if executor is None and address:
        executor = "ray"  # an address only means something to Ray
    if run_fn is None and m.trainer is not None:
        from kdjax.sweep.plugin import PluginTrainer

        run_fn = PluginTrainer(m.trainer, str(m.root))
    if not isinstance(executor, Executor):
        spec = m.executor if executor is None else m.executor.model_copy(update={"kind": executor})
        executor = make_executor(spec, run_fn, address, resources)
    if place.remote:
        place.dir.mkdir(parents=True, exist_ok=True)
        print(
            f"{workdir} is on a network filesystem ({place.kind}): the ledger is kept "
            f"at {place.path} and published to {place.shared}"
        )
    with _driver_lock(place.dir), _restored(place), Ledger(place.path) as ledger:
        requeued = ledger.reset_running()
        if requeued:
            print(f"{requeued} run(s) interrupted earlier go back to pending")
        # A plug-in trainer trains one run at a time: grouping is kdjax's trainer's.
        size = 1 if m.trainer else group_size or m.executor.group_size
        sweep = _Sweep(ledger, executor, retry_failed, progress, size, m.executor.group_memory_gb)
        sweep.publish = lambda force=False: place.publish(ledger.db, force)
        try:
            executor.prepare(str(workdir))
            teachers = list(planner.teachers.values())
            sweep.execute(teachers)
            if m.search.strategy == "grid":
                planned = _grid(planner, sweep, ledger, workdir)
            else:
                planned = _greedy(planner, sweep, ledger, workdir)
        finally:
            sweep.close()
            executor.close()
            place.publish(ledger.db, force=True)
        ids = [t.run_id for t in teachers] + planned
        rows = list(ledger.fetch(ids, *_ROW_COLUMNS).values())
    print(pair_table(rows))
    print(f"done {sweep.done}, failed {sweep.failed} of {len(set(ids))} runs; ledger in {workdir}")
    if report:
        _report(workdir)
    return {"workdir": workdir, "runs": list(dict.fromkeys(ids)), "done": sweep.done,
            "failed": sweep.failed}  # fmt: skip


_ROW_COLUMNS = (
    "kind", "status", "dataset", "student", "teacher_checkpoint", "distance", "alpha", "tau_t",
    "tau_s", "tau_squared", "val_metric", "test_metric", "metric_name",
)  # fmt: skip
