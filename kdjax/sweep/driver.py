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
from kdjax.sweep.schedule import Flow, drive
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
    """Submits runs against the ledger (skipping what is already settled) and records their
    outcomes as the executor hands them back; the progress bar counts against the study's
    planned total, corrected as stages reveal runs shared with earlier ones."""

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
        self.inflight: set[str] = set()
        self.planned_total = 0  # the bar's total once the study is planned, before any stage
        self.done = self.failed = 0
        self.bar = tqdm(total=0, unit="run", desc="sweep", disable=not progress)
        self.publish: Callable[..., bool] = lambda force=False: False
        self._same: list[str] = []  # runs after the last printed failure that failed the same way
        self._last: str | None = None
        # Cached teacher logits: the first run of each (dataset, teacher checkpoint) builds the
        # cache alone; the others wait for it instead of blocking their slots on its file lock.
        self.cached = False
        self.warm: set[tuple[str, str]] = set()
        self.builders: dict[str, tuple[str, str]] = {}  # builder run id -> its cache key
        self.held: dict[tuple[str, str], list[Run]] = {}

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

    def plan(self, total: int) -> None:
        """Add `total` planned runs to the bar (before they are known one by one)."""
        self.bar.total += total
        self.bar.refresh()

    def submit(self, runs: list[Run], planned: int = 0) -> set[str]:
        """Hand the runs not yet settled to the executor; returns the ids to wait for (those
        dispatched now and those already in flight). `planned`: how many of these runs the
        bar's total already counts (the rest, or the excess, corrects it)."""
        runs = unique(runs)
        self.ledger.upsert_pending(runs)
        new = {r.run_id for r in runs} - self.seen
        self.seen |= new
        self.bar.total += len(new) - planned
        status = self.ledger.status_of([r.run_id for r in runs])
        teachers = self.ledger.fetch({r.teacher_run for r in runs if r.teacher_run}, "status")
        todo: list[Run] = []
        wait = {r.run_id for r in runs if r.run_id in self.inflight}
        for r in runs:
            st = status[r.run_id]
            fresh = r.run_id in new
            if r.run_id in self.inflight:
                continue
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
        if todo:
            self.attempted.update(r.run_id for r in todo)
            ids = {r.run_id for r in todo}
            self.inflight |= ids
            wait |= ids
            self._dispatch(todo)
        return wait

    def warm_up(self, ledger: Ledger, cached: bool) -> None:
        """Turn on the one-builder-per-logit-cache rule (teacher_mode cached, every run its own
        task: a group shares one copy of the logits, built once in its own process); caches
        that a finished run already built are warm."""
        self.cached = cached and self.group_size <= 1
        done = ledger.rows(status="done", kind=["distill", "baseline"])
        self.warm = {(r["dataset"], r["teacher_checkpoint"]) for r in done}

    def _cache_key(self, r: Run) -> tuple[str, str] | None:
        if not (self.cached and r.teacher_run):
            return None
        key = (r.dataset, r.config.teacher_checkpoint)
        return None if key in self.warm else key

    def _dispatch(self, runs: list[Run]) -> None:
        """Hand runs to the executor, holding back those whose logit cache another run builds."""
        ready: list[Run] = []
        for r in runs:
            key = self._cache_key(r)
            if key is None:
                ready.append(r)
            elif key in self.held:  # its builder is in flight
                self.held[key].append(r)
            else:
                self.held[key] = []
                self.builders[r.run_id] = key
                self.executor.submit(plan_tasks([r], 1, self._budget)[0], self.ledger.mark_running)
        for t in plan_tasks(ready, self.group_size, self._budget):
            self.executor.submit(t, self.ledger.mark_running)

    def _release(self, run_id: str, ok: bool) -> None:
        """A cache builder settled: done, its waiting runs go now; failed, the next of them
        builds the cache."""
        key = self.builders.pop(run_id, None)
        if key is None:
            return
        if ok:
            self.warm.add(key)
        self._dispatch(self.held.pop(key))

    def pump(self) -> set[str]:
        """Record the next outcomes the executor hands back; returns the settled run ids."""
        settled = set()
        outcomes = self.executor.wait()
        for out in outcomes:
            settled.add(out.run_id)
            self.inflight.discard(out.run_id)
            if out.ok:
                self.ledger.mark_done(out.run_id, out.payload, out.attempts - 1)
                self._bar(done=1)
                continue
            self.ledger.mark_failed(out.run_id, out.payload, out.attempts - 1)
            head = out.payload.splitlines()[0]
            if head == self._last:  # e.g. every member of a group that raised: one line
                self._same.append(out.run_id)
            else:
                self._same_way()
                self.bar.write(f"run {out.run_id} failed: {head}")
                self._same, self._last = [], head
            self._bar(failed=1)
        for out in outcomes:
            self._release(out.run_id, out.ok)
        if not self.inflight:
            self._same_way()
            self._last = None
        self.publish()
        return settled

    def execute(self, runs: list[Run], planned: int = 0) -> None:
        """Submit `runs` and wait until every one of them is settled."""
        wait = self.submit(runs, planned)
        while wait & self.inflight:
            wait -= self.pump()

    def _same_way(self) -> None:
        if self._same:
            n, ids = len(self._same), ", ".join(self._same)
            self.bar.write(f"  and {n} more run(s) the same way: {ids}")
        self._same = []

    def close(self) -> None:
        self._same_way()
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


def _pair_search(planner: Planner, sweep: _Sweep, ledger: Ledger, pair: Pair, book: _Book) -> Flow:
    """One pair's greedy search, stage after stage, then (when on) its sensitivity stage;
    `book` collects each stage's choice for `search.json` and the pair's final winner."""
    best = planner.default_point()
    for k in range(len(planner.m.order()) + 1):
        stage = planner.greedy_stage(k, {pair: best})
        book.ran += [r.run_id for r in stage.runs]
        yield stage.runs, book.planned[k]
        point = book.choose(sweep, ledger, stage, pair, best)
        if point is None:
            return
        best = point
    book.optimum[pair] = best
    if planner.m.search.sensitivity_on():
        stage = planner.sensitivity_stage({pair: best})
        book.ran += [r.run_id for r in stage.runs]
        yield stage.runs, book.planned[-1]
        winner = book.choose(sweep, ledger, stage, pair, best)
        local = book.extra.setdefault("sensitivity", {}).setdefault("optimum", {})
        local["/".join(pair)] = winner == best
        if winner is None:
            return
        best = winner
    book.winners[pair] = best


class _Book:
    """What the flows chose, stage by stage, and the bar's planned run counts per stage."""

    def __init__(self, planner: Planner):
        self.entries: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, dict[str, Any]] = {}
        self.optimum: dict[Pair, Point] = {}
        self.winners: dict[Pair, Point] = {}
        self.ran: list[str] = []  # every stage's run ids, in the order the flows planned them
        m, seeds = planner.m, len(planner.m.seeds)
        # Upper bounds of the new runs of each stage per pair (a stage reuses the runs of its
        # incumbent; the bar's total is corrected when a stage's runs are known).
        stage0 = planner.greedy_stage(0, {planner.pairs()[0]: planner.default_point()})
        self.planned = [len(unique(stage0.runs))]
        self.planned += [seeds * (len(getattr(m.axes, a)) - 1) for a in m.order()]
        # Sensitivity: one-knob variants of the optimum; those along the last searched axis ran
        # in its stage already.
        last = m.order()[-1:] if m.order() else []
        self.planned.append(seeds * sum(len(getattr(m.axes, a)) - 1 for a in AXES if a not in last))

    def total(self, planner: Planner) -> int:
        """The study's planned student runs: every pair's stages, plus the transfer stage."""
        m = planner.m
        per_pair = sum(self.planned[:-1]) + (self.planned[-1] if m.search.sensitivity_on() else 0)
        return len(planner.pairs()) * per_pair + self.transfer_bound(planner)

    @staticmethod
    def transfer_bound(planner: Planner) -> int:
        m = planner.m
        if not m.search.transfer_on():
            return 0
        return (m.search.transfer_top_k + 2) * len(planner.pairs()) * len(m.seeds)

    def choose(
        self, sweep: _Sweep, ledger: Ledger, stage: Stage, pair: Pair, best: Point
    ) -> Point | None:
        options = stage.options[pair]
        point = choose(options, _val_scores(ledger, [i for ids in options.values() for i in ids]),
                       best)  # fmt: skip
        entry = self.entries.setdefault(
            stage.label, {"stage": stage.label, "best": {}, "options": {}}
        )
        key = "/".join(pair)
        entry["options"][key] = [[list(pt), ids] for pt, ids in options.items()]
        if point is None:
            sweep.bar.write(
                f"{pair[0]}/{pair[1]}: no run of stage {stage.label} finished; "
                "this pair is not searched further"
            )
        else:
            entry["best"][key] = point
        return point

    def history(self, labels: list[str]) -> list[dict[str, Any]]:
        out = []
        for label in labels:
            if label in self.entries:
                out.append({**self.entries[label], **self.extra.get(label, {})})
        return out


def _transfer(
    planner: Planner, sweep: _Sweep, ledger: Ledger, winners: dict[Pair, Point], planned: int
) -> tuple[list[Run], list[dict[str, Any]]]:
    """The transfer stage: candidate single configurations on every pair (it compares
    configurations across pairs, so it follows every pair's search)."""
    if not (planner.m.search.transfer_on() and winners):
        sweep.plan(-planned)
        return [], []
    done = ledger.rows(status="done", kind=["distill", "baseline"])
    scores = {r["run_id"]: r["val_metric"] for r in done if r["val_metric"] is not None}
    candidates = planner.transfer_candidates(winners, scores)
    stage = planner.transfer_stage(candidates)
    sweep.execute(stage.runs, planned)
    cands = [{"config": list(p), "why": why} for p, why in candidates]
    return stage.runs, [_entry(stage, winners, candidates=cands)]


def _greedy(planner: Planner, sweep: _Sweep, ledger: Ledger, workdir: Path) -> list[str]:
    """Every pair through its greedy stages (then sensitivity) on its own, as soon as its
    runs finish; then the transfer stage over all pairs."""
    book = _Book(planner)
    sweep.plan(book.total(planner))
    sweep.planned_total = sweep.bar.total
    flows = {
        pair: (pair[0], _pair_search(planner, sweep, ledger, pair, book))
        for pair in planner.pairs()
    }
    drive(sweep, planner.teachers, flows)
    winners = book.winners if planner.m.search.sensitivity_on() else book.optimum
    runs, more = _transfer(planner, sweep, ledger, winners, book.transfer_bound(planner))
    history = book.history([*planner.stage_labels(), "sensitivity"]) + more
    (workdir / "search.json").write_text(json.dumps(history, indent=1) + "\n")
    return list(dict.fromkeys(book.ran + [r.run_id for r in runs]))


def _grid(planner: Planner, sweep: _Sweep, ledger: Ledger, workdir: Path) -> list[str]:
    """Every configuration everywhere, each dataset's runs as soon as its teacher finishes;
    with `search.transfer`, the candidate single configurations recorded too (all ran
    already)."""
    runs = planner.grid()
    transfer = _Book.transfer_bound(planner)
    sweep.plan(len(runs) + transfer)
    sweep.planned_total = sweep.bar.total

    def dataset_flow(name: str) -> Flow:
        mine = [r for r in runs if r.dataset == name]
        yield mine, len(mine)

    drive(sweep, planner.teachers, {d: (d, dataset_flow(d)) for d in planner.datasets})
    planned = [r.run_id for r in runs]
    if planner.m.search.transfer_on():
        stage = Stage("grid", None)
        values = [getattr(planner.m.axes, a) for a in AXES]
        for pair in planner.pairs():
            stage.options[pair] = {}
            for point in itertools.product(*values):
                stage.options[pair][point] = planner._ids(pair, point)
        best = run_stage(sweep, ledger, stage, {})
        more_runs, more = _transfer(planner, sweep, ledger, best, transfer)
        planned += [r.run_id for r in more_runs]
        (workdir / "search.json").write_text(json.dumps(more, indent=1) + "\n")
    else:
        sweep.plan(-transfer)
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
def _driver_lock(workdir: Path, best_effort: bool = False):
    # Only one driver may write a ledger; the OS drops the lock when a driver dies, even by
    # SIGKILL, so a stale lock never blocks a resume. `best_effort`: on a network filesystem
    # (NFSv4 has locks, gcsfuse has none) a lock that cannot be taken is skipped, but one that
    # another driver holds still stops this one.
    with open(workdir / "driver.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise RuntimeError(
                f"another driver (pid {f.read().strip() or '?'}) is running the sweep in "
                f"{workdir}; wait for it or stop it first"
            ) from None
        except OSError:
            if not best_effort:
                raise
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
    if executor is None and (address or resources is not None):
        executor = "ray"  # an address or a per-task request only means something to Ray
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
    shared_lock = _driver_lock(workdir, True) if place.remote else contextlib.nullcontext()
    with shared_lock, _driver_lock(place.dir), _restored(place), Ledger(place.path) as ledger:
        requeued = ledger.reset_running()
        if requeued:
            print(f"{requeued} run(s) interrupted earlier go back to pending")
        # A plug-in trainer trains one run at a time: grouping is kdjax's trainer's.
        size = 1 if m.trainer else group_size or m.executor.group_size
        sweep = _Sweep(ledger, executor, retry_failed, progress, size, m.executor.group_memory_gb)
        sweep.publish = lambda force=False: place.publish(ledger.db, force)
        sweep.warm_up(ledger, m.teacher_mode == "cached")
        try:
            executor.prepare(str(workdir))
            teachers = list(planner.teachers.values())
            sweep.plan(len(teachers))
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
            "failed": sweep.failed, "planned_total": sweep.planned_total,
            "total": sweep.bar.total}  # fmt: skip


_ROW_COLUMNS = (
    "kind", "status", "dataset", "student", "teacher_checkpoint", "distance", "alpha", "tau_t",
    "tau_s", "tau_squared", "val_metric", "test_metric", "metric_name",
)  # fmt: skip
