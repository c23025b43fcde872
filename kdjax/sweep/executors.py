"""Executors: take runs, hand back their outcomes as they finish.

Runs are idempotent and results come back to the driver, which alone writes the ledger; an
executor only runs things. `LocalExecutor` runs them in this process, one at a time;
`RayExecutor` (`kdjax.sweep.ray_exec`) spreads them over a Ray cluster, one task per run or
group on one slot (a GPU, a fraction of one, or TPU chips). A
`Group` of runs (grouped training, `kdjax.training.grouped`) is one task that gives back one
outcome per member: a member that fails does not fail the others.
"""

from __future__ import annotations

import collections
import functools
import json
import socket
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

RunFn = Callable[[str], dict]
# configs (JSON) -> one result per member, in order; a failed member's is
# {"failed": True, "error": "Type: message\n..."}.
GroupFn = Callable[[list[str]], list[dict]]


def execute(config_json: str) -> dict[str, Any]:
    """Run one resolved config (JSON) with the canonical trainer; the workers' entry point."""
    from kdjax.config import parse_config
    from kdjax.training import train

    cfg = parse_config(json.loads(config_json), "run config")
    result = dict(train(cfg, progress=False))
    result["host"] = socket.gethostname()
    return result


def execute_group(configs_json: list[str]) -> list[dict[str, Any]]:
    """Train resolved configs (JSON) together in grouped steps; the workers' group entry point."""
    from kdjax.config import parse_config
    from kdjax.training.grouped import train_group

    cfgs = [parse_config(json.loads(c), "run config") for c in configs_json]
    results = train_group(cfgs, progress=False)
    host = socket.gethostname()
    return [{**r, "host": host} for r in results]


def one_by_one(run_fn: RunFn, configs_json: list[str]) -> list[dict[str, Any]]:
    """A group run member by member with `run_fn` (for a trainer that cannot group)."""
    out = []
    for c in configs_json:
        try:
            out.append(run_fn(c))
        except Exception as e:  # noqa: BLE001 - one member's failure is that member's
            out.append({"failed": True, "error": error_text(e)})
    return out


@dataclass(frozen=True)
class Task:
    run_id: str
    config_json: str
    output_dir: str


@dataclass(frozen=True)
class Outcome:
    run_id: str
    ok: bool
    payload: Any  # the result dict, or the error text
    attempts: int = 1  # executions of this submission (> 1 when a dead worker was retried)


@dataclass(frozen=True)
class Group:
    """Runs trained together as one task."""

    members: tuple[Task, ...]


def members(t: Task | Group) -> tuple[Task, ...]:
    return t.members if isinstance(t, Group) else (t,)


def succeeded(t: Task | Group, value: Any, attempts: int = 1) -> list[Outcome]:
    """One outcome per run from what the run (its result) or the group (one per member)
    returned; a member whose result says `failed` failed alone."""
    if isinstance(t, Task):
        return [Outcome(t.run_id, True, value, attempts)]
    if not isinstance(value, list) or len(value) != len(t.members):
        got = len(value) if isinstance(value, list) else type(value).__name__
        error = f"GroupError: expected {len(t.members)} results, got {got}"
        return [Outcome(m.run_id, False, error, attempts) for m in t.members]
    out = []
    for m, r in zip(t.members, value, strict=True):
        if isinstance(r, dict) and r.get("failed"):
            out.append(Outcome(m.run_id, False, str(r.get("error", "failed")), attempts))
        else:
            out.append(Outcome(m.run_id, True, r, attempts))
    return out


def failed(t: Task | Group, error: str, attempts: int = 1) -> list[Outcome]:
    """The run failed with `error`; a group's every member, with the hint to train alone."""
    if isinstance(t, Task):
        return [Outcome(t.run_id, False, error, attempts)]
    head, _, rest = error.partition("\n")
    n = len(t.members)
    text = f"{head} (in a group of {n}; rerun with --retry-failed --group-size 1 to train alone)"
    return [Outcome(m.run_id, False, f"{text}\n{rest}", attempts) for m in t.members]


def error_text(e: BaseException) -> str:
    """First line `Type: message` (what `kdjax status` shows), then the traceback."""
    tb = "".join(traceback.format_exception(e)).rstrip()
    return f"{type(e).__name__}: {e}".split("\n", 1)[0] + "\n" + tb


class Executor:
    """Runs tasks and hands back their outcomes as they finish.

    The driver `submit`s a task as soon as it is ready (its teacher done, its stage open) and
    calls `wait` for what finished next, so work of one dataset-student pair never waits for
    another's. `on_start(run_id)` is called, in the caller's thread, as each run is
    dispatched (for every member of a group). `run_fn` trains one run (default `execute`);
    `group_fn` trains a group (default `execute_group`, or member by member with a custom
    `run_fn`)."""

    name = "executor"

    def __init__(self, run_fn: RunFn | None = None, group_fn: GroupFn | None = None):
        self.run_fn = run_fn or execute
        if group_fn is None:
            group_fn = execute_group if run_fn is None else functools.partial(one_by_one, run_fn)
        self.group_fn = group_fn

    def prepare(self, workdir: str) -> None:
        """Checks before the first task (cluster resources, shared storage); raise to stop."""

    def submit(self, t: Task | Group, on_start: Callable[[str], None]) -> None:
        raise NotImplementedError

    def wait(self) -> list[Outcome]:
        """Outcomes of at least one finished task (all members of a group); [] when nothing
        is submitted."""
        raise NotImplementedError

    @property
    def busy(self) -> int:
        """Tasks submitted and not yet handed back."""
        raise NotImplementedError

    def run(
        self, tasks: Sequence[Task | Group], on_start: Callable[[str], None]
    ) -> Iterator[Outcome]:
        """All of `tasks`, outcomes as they finish."""
        for t in tasks:
            self.submit(t, on_start)
        while self.busy:
            yield from self.wait()

    def slot_memory(self) -> int:
        """Bytes one task may use on the device it gets: 80% of the device's memory, or half
        the host's RAM where the device does not say (a CPU)."""
        return device_memory()

    def call(self, t: Task | Group) -> tuple[Callable[[Any], Any], Any]:
        """The function that trains `t` and its argument."""
        if isinstance(t, Group):
            return self.group_fn, [m.config_json for m in t.members]
        return self.run_fn, t.config_json

    def close(self) -> None:
        pass


def device_memory() -> int:
    """80% of the first local device's memory limit, else half this host's RAM."""
    import os

    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(0.8 * stats["bytes_limit"])
    return int(0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


class LocalExecutor(Executor):
    """In-process, one task at a time, in the order submitted (the order in which tasks became
    ready). An exception fails that run (or every member of that group); the sweep goes on."""

    name = "local"

    def __init__(self, run_fn: RunFn | None = None, group_fn: GroupFn | None = None):
        super().__init__(run_fn, group_fn)
        self._queue: collections.deque = collections.deque()

    def submit(self, t: Task | Group, on_start: Callable[[str], None]) -> None:
        self._queue.append((t, on_start))

    @property
    def busy(self) -> int:
        return len(self._queue)

    def wait(self) -> list[Outcome]:
        if not self._queue:
            return []
        t, on_start = self._queue.popleft()
        for m in members(t):
            on_start(m.run_id)
        fn, payload = self.call(t)
        try:
            value = fn(payload)
        except Exception as e:  # noqa: BLE001 - any run error is that run's failure
            return failed(t, error_text(e))
        return succeeded(t, value)

    def close(self) -> None:
        self._queue.clear()


def make_executor(
    spec: Any,
    run_fn: RunFn | None = None,
    address: str | None = None,
    resources: dict[str, float] | None = None,
) -> Executor:
    """An executor from a manifest's `executor` section; `address` overrides its address and
    `resources` (e.g. {"GPU": 0.5} or {"TPU": 1}) its per-task resource request."""
    if spec.kind == "local":
        return LocalExecutor(run_fn)
    from kdjax.sweep.ray_exec import RayExecutor, split_request

    request = {"CPU": spec.num_cpus, "GPU": spec.num_gpus, **spec.resources}
    if resources is not None:  # --resources replaces the accelerator part of the request
        request = {"CPU": spec.num_cpus, **split_request(resources)}
    request = split_request(request)
    return RayExecutor(
        address=address or spec.address,
        num_cpus=request.pop("CPU", spec.num_cpus),
        num_gpus=request.pop("GPU", 0),
        resources=request,
        max_retries=spec.max_retries,
        run_fn=run_fn,
    )


def __getattr__(name: str) -> Any:  # RayExecutor moved to ray_exec; old imports keep working
    if name == "RayExecutor":
        from kdjax.sweep.ray_exec import RayExecutor

        return RayExecutor
    raise AttributeError(name)
