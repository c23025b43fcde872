"""Executors: take runs, hand back their outcomes as they finish.

Runs are idempotent and results come back to the driver, which alone writes the ledger; an
executor only runs things. `LocalExecutor` runs them in this process, one at a time;
`RayExecutor` spreads them over a Ray cluster (GPU nodes, TPU hosts), one task per run. A
`Group` of runs (grouped training, `kdjax.training.grouped`) is one task that gives back one
outcome per member: a member that fails does not fail the others.
"""

from __future__ import annotations

import functools
import json
import socket
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
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
    """Runs tasks; `on_start(run_id)` is called (in the caller's thread) as each run is
    dispatched, for every member of a group.

    `run_fn` trains one run (default `execute`); `group_fn` trains a group (default
    `execute_group`, or member by member with a custom `run_fn`)."""

    name = "executor"

    def __init__(self, run_fn: RunFn | None = None, group_fn: GroupFn | None = None):
        self.run_fn = run_fn or execute
        if group_fn is None:
            group_fn = execute_group if run_fn is None else functools.partial(one_by_one, run_fn)
        self.group_fn = group_fn

    def run(
        self, tasks: Sequence[Task | Group], on_start: Callable[[str], None]
    ) -> Iterator[Outcome]:
        raise NotImplementedError

    def call(self, t: Task | Group) -> tuple[Callable[[Any], Any], Any]:
        """The function that trains `t` and its argument."""
        if isinstance(t, Group):
            return self.group_fn, [m.config_json for m in t.members]
        return self.run_fn, t.config_json

    def close(self) -> None:
        pass


class LocalExecutor(Executor):
    """In-process, one task at a time. An exception fails that run (or every member of that
    group); the sweep goes on."""

    name = "local"

    def run(
        self, tasks: Sequence[Task | Group], on_start: Callable[[str], None]
    ) -> Iterator[Outcome]:
        for t in tasks:
            for m in members(t):
                on_start(m.run_id)
            fn, payload = self.call(t)
            try:
                value = fn(payload)
            except Exception as e:  # noqa: BLE001 - any run error is that run's failure
                yield from failed(t, error_text(e))
            else:
                yield from succeeded(t, value)


def _ray_task(fn: Callable[[Any], Any], payload: Any, marker: str | None) -> Any:
    # Each execution (a retry after a worker died included) leaves a line in the marker, so
    # the driver can record how many attempts a run took.
    if marker:
        try:
            Path(marker).parent.mkdir(parents=True, exist_ok=True)
            with open(marker, "a") as f:
                f.write(f"{socket.gethostname()}\n")
        except OSError:
            pass  # no shared filesystem: attempts are then counted once
    return fn(payload)


class RayExecutor(Executor):
    """One Ray task per run or group, placed by `num_cpus`/`num_gpus`/`resources` (TPU hosts:
    `resources={"TPU": 4}`). A task whose worker dies is retried by Ray up to `max_retries`
    times; an exception raised by the run is not retried and comes back as a failure."""

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        resources: dict[str, float] | None = None,
        max_retries: int = 2,
        run_fn: RunFn | None = None,
        group_fn: GroupFn | None = None,
    ):
        super().__init__(run_fn, group_fn)
        self.address = address
        self.options: dict[str, Any] = {
            "num_cpus": num_cpus,
            "num_gpus": num_gpus,
            "resources": dict(resources or {}),
            "max_retries": max_retries,
            "retry_exceptions": False,
        }
        if num_gpus or resources:
            # A fresh process per run hands the accelerator's memory back when the run ends.
            self.options["max_calls"] = 1
        self._started = False

    def _connect(self):
        try:
            import ray
        except ImportError:
            raise RuntimeError(
                "executor ray: the `ray` package is not installed; pip install 'kdjax[ray]'"
            ) from None
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False)
            self._started = True
        return ray

    def run(
        self, tasks: Sequence[Task | Group], on_start: Callable[[str], None]
    ) -> Iterator[Outcome]:
        ray = self._connect()
        remote = ray.remote(_ray_task).options(**self.options)
        pending: dict[Any, tuple[Task | Group, str]] = {}
        try:
            for t in tasks:
                first = members(t)[0]
                marker = str(Path(first.output_dir) / f".attempt-{uuid.uuid4().hex[:12]}")
                for m in members(t):
                    on_start(m.run_id)
                pending[remote.remote(*self.call(t), marker)] = (t, marker)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    t, marker = pending.pop(ref)
                    yield from self._outcomes(ray, ref, t, marker)
        finally:
            for ref in pending:  # the driver stopped early: do not leave runs behind
                ray.cancel(ref, force=True)

    def _outcomes(self, ray, ref, t: Task | Group, marker: str) -> list[Outcome]:
        attempts = _count_lines(marker)
        try:
            value = ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if getattr(e, "cause", None) is not None else e
            head = f"{type(cause).__name__}: {cause}".split("\n", 1)[0]
            error = f"{head}\n{e}"
        except ray.exceptions.RayError as e:  # a worker or node died more than max_retries times
            head = f"{type(e).__name__}: {e}".split("\n", 1)[0]
            error = f"{head}\n{e}"
        else:
            return succeeded(t, value, attempts)
        return failed(t, error, attempts)

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False


def _count_lines(marker: str) -> int:
    path = Path(marker)
    try:
        n = len(path.read_text().splitlines())
        path.unlink()
    except OSError:
        return 1
    return max(n, 1)


EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor, "ray": RayExecutor}


def make_executor(spec: Any, run_fn: RunFn | None = None, address: str | None = None) -> Executor:
    """An executor from a manifest's `executor` section (`address` overrides its address)."""
    if spec.kind == "local":
        return LocalExecutor(run_fn)
    return RayExecutor(
        address=address or spec.address,
        num_cpus=spec.num_cpus,
        num_gpus=spec.num_gpus,
        resources=spec.resources,
        max_retries=spec.max_retries,
        run_fn=run_fn,
    )
