"""No global barriers: each flow of runs advances as soon as its own runs are settled.

A flow is a generator that yields batches of runs and, once every run of a batch is settled
(done or failed), decides the next batch from the ledger: one (dataset, student) pair's greedy
stages then its sensitivity stage, or one dataset's grid. A flow starts when its dataset's
teacher run is settled, so students of dataset A train while teacher B still trains, and a
fast pair finishes its whole search while a slow pair is still in its first stage. Only the
transfer stage, which compares configurations across pairs by design, waits for every flow.
"""

from __future__ import annotations

from collections.abc import Generator, Hashable
from typing import Any, Protocol

from kdjax.sweep.plan import Run

# A batch: its runs, and how many of them the progress bar's planned total already counts.
Batch = tuple[list[Run], int]
Flow = Generator[Batch, None, None]


class Submitter(Protocol):
    inflight: set[str]

    def submit(self, runs: list[Run], planned: int = 0) -> set[str]: ...

    def pump(self) -> set[str]: ...


def drive(sweep: Submitter, teachers: dict[str, Run], flows: dict[Hashable, Any]) -> None:
    """Run `teachers` (dataset -> teacher run) and `flows` (key -> (dataset, flow)) to the end,
    each flow starting once its dataset's teacher is settled."""
    waiting: dict[Hashable, set[str]] = {}
    blocked: dict[str, list[Hashable]] = {}

    def advance(key: Hashable) -> None:
        gen = flows[key][1]
        while True:
            try:
                runs, planned = next(gen)
            except StopIteration:
                waiting.pop(key, None)
                return
            ids = sweep.submit(runs, planned)
            if ids:
                waiting[key] = ids
                return

    for t in teachers.values():
        sweep.submit([t], 1)
    for key, (dataset, _) in flows.items():
        teacher = teachers[dataset].run_id
        if teacher in sweep.inflight:
            blocked.setdefault(teacher, []).append(key)
        else:
            advance(key)
    while waiting or blocked:
        if not sweep.inflight:
            raise RuntimeError(f"scheduler: nothing in flight, yet flows wait: {list(waiting)}")
        settled = sweep.pump()
        for teacher in settled & blocked.keys():
            for key in blocked.pop(teacher):
                advance(key)
        for key in list(waiting):
            if key in waiting and not (waiting[key] - settled):
                advance(key)
            elif key in waiting:
                waiting[key] -= settled
