"""Executors: take runs, hand back their outcomes as they finish.

Runs are idempotent and results come back to the driver, which alone writes the ledger; an
executor only runs things. `LocalExecutor` runs them in this process, one at a time;
`RayExecutor` spreads them over a Ray cluster (GPU nodes, TPU hosts), one task per run.
"""

from __future__ import annotations

import json
import socket
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RunFn = Callable[[str], dict]


def execute(config_json: str) -> dict[str, Any]:
    """Run one resolved config (JSON) with the canonical trainer; the workers' entry point."""
    from kdjax.config import parse_config
    from kdjax.training import train

    cfg = parse_config(json.loads(config_json), "run config")
    result = dict(train(cfg, progress=False))
    result["host"] = socket.gethostname()
    return result


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


def error_text(e: BaseException) -> str:
    """First line `Type: message` (what `kdjax status` shows), then the traceback."""
    tb = "".join(traceback.format_exception(e)).rstrip()
    return f"{type(e).__name__}: {e}".split("\n", 1)[0] + "\n" + tb


class Executor:
    """Runs tasks; `on_start(run_id)` is called (in the caller's thread) as each is dispatched."""

    name = "executor"

    def run(self, tasks: Sequence[Task], on_start: Callable[[str], None]) -> Iterator[Outcome]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalExecutor(Executor):
    """In-process, one run at a time. An exception fails that run; the sweep goes on."""

    name = "local"

    def __init__(self, run_fn: RunFn | None = None):
        self.run_fn = run_fn or execute

    def run(self, tasks: Sequence[Task], on_start: Callable[[str], None]) -> Iterator[Outcome]:
        for t in tasks:
            on_start(t.run_id)
            try:
                result = self.run_fn(t.config_json)
            except Exception as e:  # noqa: BLE001 - any run error is that run's failure
                yield Outcome(t.run_id, False, error_text(e))
            else:
                yield Outcome(t.run_id, True, result)


def _ray_task(run_fn: RunFn, config_json: str, marker: str | None) -> dict:
    # Each execution (a retry after a worker died included) leaves a line in the marker, so
    # the driver can record how many attempts a run took.
    if marker:
        try:
            Path(marker).parent.mkdir(parents=True, exist_ok=True)
            with open(marker, "a") as f:
                f.write(f"{socket.gethostname()}\n")
        except OSError:
            pass  # no shared filesystem: attempts are then counted once
    return run_fn(config_json)


class RayExecutor(Executor):
    """One Ray task per run, placed by `num_cpus`/`num_gpus`/`resources` (TPU hosts:
    `resources={"TPU": 4}`). A run whose worker dies is retried by Ray up to `max_retries`
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
    ):
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
        self.run_fn = run_fn or execute
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

    def run(self, tasks: Sequence[Task], on_start: Callable[[str], None]) -> Iterator[Outcome]:
        ray = self._connect()
        remote = ray.remote(_ray_task).options(**self.options)
        pending: dict[Any, tuple[Task, str]] = {}
        try:
            for t in tasks:
                marker = str(Path(t.output_dir) / f".attempt-{uuid.uuid4().hex[:12]}")
                on_start(t.run_id)
                pending[remote.remote(self.run_fn, t.config_json, marker)] = (t, marker)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    t, marker = pending.pop(ref)
                    yield self._outcome(ray, ref, t, marker)
        finally:
            for ref in pending:  # the driver stopped early: do not leave runs behind
                ray.cancel(ref, force=True)

    def _outcome(self, ray, ref, t: Task, marker: str) -> Outcome:
        attempts = _count_lines(marker)
        try:
            return Outcome(t.run_id, True, ray.get(ref), attempts)
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if getattr(e, "cause", None) is not None else e
            head = f"{type(cause).__name__}: {cause}".split("\n", 1)[0]
            return Outcome(t.run_id, False, f"{head}\n{e}", attempts)
        except ray.exceptions.RayError as e:  # a worker or node died more than max_retries times
            head = f"{type(e).__name__}: {e}".split("\n", 1)[0]
            return Outcome(t.run_id, False, f"{head}\n{e}", attempts)

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
