"""The Ray executor: one driver, one task per run or group, each on one slot.

A slot is what one task asks for: `{"GPU": 1}`, a fraction of a GPU (`{"GPU": 0.5}`: two runs
share it), or TPU chips (`{"TPU": 1}`: one chip; Ray accepts 1, 2, 4 or 8 chips per task,
`TPU_VALID_CHIP_OPTIONS` in ray/_private/accelerators/tpu.py). Before the first task the
executor checks that some node can hold a slot (a request no node can meet would pend
forever) and that every node that can sees the workdir (a sentinel file the driver writes).

TPU: on a host of a multi-host slice, libtpu by default joins the whole slice and waits for the
other hosts. Ray confines a task to its chips with TPU_VISIBLE_CHIPS and, for 1- or 2-chip
requests only, TPU_CHIPS_PER_HOST_BOUNDS / TPU_HOST_BOUNDS; a task holding all of a host's
chips gets no bounds at all (`set_current_process_visible_accelerator_ids` in Ray's tpu.py) and
hangs at TPU initialisation. Each task therefore sets the single-process topology itself, from
the chips Ray gave it (`ray.get_runtime_context().get_accelerator_ids()["TPU"]`):
TPU_VISIBLE_CHIPS, TPU_CHIPS_PER_PROCESS_BOUNDS (1,1,1 for one chip ... 2,4,1 for eight),
TPU_PROCESS_BOUNDS=1,1,1 and a port of its own (TPU_PROCESS_PORT, TPU_MESH_CONTROLLER_*), as in
the non-communicating-processes recipe of
https://gist.github.com/skye/f82ba45d2445bb19d53545538754f9a3 (JAX team) and PyTorch/XLA's
per-process TPU environment (pytorch/xla PR 4724: TPU_PROCESS_PORT, TPU_PROCESS_ADDRESSES,
TPU_VISIBLE_CHIPS); the older names TPU_CHIPS_PER_HOST_BOUNDS / TPU_HOST_BOUNDS are set too
(pytorch/xla issue 7714: TPU_HOST_BOUNDS=1,1,1 runs one host of a pod alone).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdjax.sweep.executors import (
    Executor,
    Group,
    GroupFn,
    Outcome,
    RunFn,
    Task,
    failed,
    members,
    succeeded,
)
from kdjax.sweep.storage import read_sentinel, storage_fix, write_sentinel

TPU_CHIP_OPTIONS = (1, 2, 4, 8)
# Chips of one process as an x,y,z box: one chip, a pair, a 2x2 host (v4, v5p), a 2x4 host
# (v5e, v6e).
CHIP_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1", 8: "2,4,1"}
TPU_BASE_PORT = 8476  # libtpu's default process port


def split_request(resources: dict[str, Any], where: str = "--resources") -> dict[str, float]:
    """A validated per-task request: numbers >= 0; TPU a whole chip count Ray accepts; GPU a
    fraction up to 1 or a whole number."""
    from kdjax.config import ConfigError  # not at the top: workers import this module fast

    if not isinstance(resources, dict):
        raise ConfigError(f'{where}: expected a mapping such as {{"GPU": 1}} or {{"TPU": 1}}')
    out: dict[str, float] = {}
    for k, v in resources.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
            raise ConfigError(f"{where}.{k}: must be a number >= 0, got {v!r}")
        if k == "TPU" and v and v not in TPU_CHIP_OPTIONS:
            allowed = ", ".join(map(str, TPU_CHIP_OPTIONS))
            raise ConfigError(f"{where}.TPU: {v!r} chips; Ray allows {allowed} per task")
        if k == "GPU" and v > 1 and v != int(v):
            raise ConfigError(f"{where}.GPU: {v!r}; a fraction up to 1, or a whole number")
        out[str(k)] = float(v)
    return out


def tpu_env(chips: list[int]) -> dict[str, str]:
    """The environment that makes libtpu use exactly `chips` of this host, as one process of a
    one-process job (see the module doc)."""
    n = len(chips)
    if n not in CHIP_BOUNDS:
        raise ValueError(f"{n} TPU chips for one task; one of {TPU_CHIP_OPTIONS}")
    port = str(TPU_BASE_PORT + 2 * min(chips))  # distinct per task on a host
    bounds = CHIP_BOUNDS[n]
    return {
        "TPU_VISIBLE_CHIPS": ",".join(map(str, sorted(chips))),
        "TPU_CHIPS_PER_PROCESS_BOUNDS": bounds,
        "TPU_PROCESS_BOUNDS": "1,1,1",
        "TPU_CHIPS_PER_HOST_BOUNDS": bounds,
        "TPU_HOST_BOUNDS": "1,1,1",
        "TPU_PROCESS_PORT": port,
        "TPU_PROCESS_ADDRESSES": f"localhost:{port}",
        "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{port}",
        "TPU_MESH_CONTROLLER_PORT": port,
        "CLOUD_TPU_TASK_ID": "0",
        "TPU_WORKER_ID": "0",
        "TPU_WORKER_HOSTNAMES": "localhost",
    }


def claim_chips() -> dict[str, str]:
    """In a Ray task: set the single-process TPU environment for the chips Ray assigned (none:
    nothing changes); returns what was set. Before JAX initialises its backend."""
    import ray

    ids = ray.get_runtime_context().get_accelerator_ids().get("TPU") or []
    if not ids:
        return {}
    env = tpu_env(sorted({int(i) for i in ids}))
    os.environ.update(env)
    return env


def gpu_share_env(share: float) -> dict[str, str]:
    """For a task holding a fraction of a GPU: JAX preallocates 75% of a GPU's memory in each
    process (https://docs.jax.dev/en/latest/gpu_memory_allocation.html), so two processes on
    one GPU would run out; XLA_PYTHON_CLIENT_MEM_FRACTION caps each at its share."""
    if not 0 < share < 1:
        return {}
    return {"XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.95 * share:.3f}"}


def _claim(gpu_share: float) -> None:
    claim_chips()
    for k, v in gpu_share_env(gpu_share).items():
        os.environ.setdefault(k, v)


def _ray_task(
    fn: Callable[[Any], Any], payload: Any, marker: str | None, gpu_share: float = 0
) -> Any:
    _claim(gpu_share)
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


def _probe_memory(gpu_share: float = 0) -> int:
    _claim(gpu_share)
    from kdjax.sweep.executors import device_memory

    return device_memory()


def _probe_storage(path: str, token: str) -> tuple[str, str | None]:
    return socket.gethostname(), read_sentinel(path, token)


def fits(request: dict[str, float], node: dict[str, Any]) -> bool:
    have = node.get("Resources") or {}
    return all(have.get(k, 0) >= v for k, v in request.items() if v > 0)


def check_feasible(request: dict[str, float], nodes: list[dict[str, Any]]) -> list[dict]:
    """The alive nodes that can hold one task of `request`; raises, naming the resource that no
    node has, when there is none."""
    alive = [n for n in nodes if n.get("Alive")]
    ok = [n for n in alive if fits(request, n)]
    if ok:
        return ok
    want = {k: v for k, v in request.items() if v > 0}
    short = [k for k, v in want.items() if not any(n["Resources"].get(k, 0) >= v for n in alive)]
    have = "; ".join(
        f"{n.get('NodeManagerAddress', '?')}: "
        + ", ".join(
            f"{k} {v:g}"
            for k, v in sorted(n["Resources"].items())
            if k in ("CPU", "GPU", "TPU") or k in want
        )  # fmt: skip
        for n in alive
    )
    if short:
        what = ", ".join(f"{k} >= {want[k]:g}" for k in short)
        head = f"no node of the Ray cluster has {what}"
    else:
        head = f"no single node has all of {want}"
    raise RuntimeError(
        f"executor ray: each task asks for {want}, but {head} (nodes: {have or 'none'}); "
        "change executor.resources or `kdjax run --resources`, e.g. '{\"GPU\": 1}' on GPU "
        "nodes, '{\"TPU\": 1}' on TPU hosts, '{}' for CPU only"
    )


class RayExecutor(Executor):
    """One Ray task per run or group, placed by `num_cpus`/`num_gpus`/`resources`. A task
    whose worker dies is retried by Ray up to `max_retries` times; an exception raised by the
    run is not retried and comes back as a failure."""

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
        check_storage: bool = True,
        fresh_workers: bool | None = None,
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
        # With an accelerator, a fresh worker process per task (default): it hands the device's
        # memory back when the task ends, and JAX binds a process to the chips or GPU it saw
        # first. Reusing workers (False) only suits runs that touch no accelerator.
        self.fresh = bool(num_gpus or resources) if fresh_workers is None else fresh_workers
        self.check_storage = check_storage
        self._started = False
        self._pending: dict[Any, tuple[Task | Group, str]] = {}
        self._remote = None

    @property
    def request(self) -> dict[str, float]:
        o = self.options
        return {"CPU": o["num_cpus"], "GPU": o["num_gpus"], **o["resources"]}

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

    def prepare(self, workdir: str) -> None:
        # The driver never touches an accelerator: on a TPU host libtpu would take every chip
        # of the host (and, on a multi-host slice, wait for the other hosts). Set in this
        # process only, so that workers started by a local Ray keep their devices.
        import jax

        jax.config.update("jax_platforms", "cpu")
        ray = self._connect()
        nodes = check_feasible(self.request, ray.nodes())
        if self.check_storage:
            self._probe_storage(ray, workdir, nodes)

    def _probe_storage(self, ray, workdir: str, nodes: list[dict]) -> None:
        """Every node that can run a task reads the sentinel the driver wrote."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        path, token = write_sentinel(workdir)
        try:
            probe = ray.remote(_probe_storage)
            refs = {
                (n["NodeManagerAddress"], n["NodeID"]): probe.options(
                    num_cpus=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
                ).remote(path, token)
                for n in nodes
            }
            bad = []
            for (addr, node_id), ref in refs.items():
                host, error = ray.get(ref, timeout=120)
                if error:
                    bad.append(f"{host} ({addr}, node {node_id[:8]}): {error}")
        finally:
            Path(path).unlink(missing_ok=True)
        if bad:
            raise RuntimeError(
                f"storage: {len(bad)} of {len(nodes)} Ray node(s) do not see the workdir "
                f"{workdir}: {'; '.join(bad)}. Their runs would write where the driver and the "
                f"other workers cannot read; {storage_fix(workdir)}"
            )

    def slot_memory(self) -> int:
        """Memory of the device one task gets, measured by a probe task on a worker."""
        ray = self._connect()
        opts = {k: v for k, v in self.options.items() if k != "retry_exceptions"}
        probe = self._remote_fn(ray, _probe_memory).options(**opts)
        return int(ray.get(probe.remote(self.options["num_gpus"]), timeout=600))

    def _remote_fn(self, ray, fn):
        return ray.remote(max_calls=1)(fn) if self.fresh else ray.remote(fn)

    def submit(self, t: Task | Group, on_start: Callable[[str], None]) -> None:
        ray = self._connect()
        if self._remote is None:
            self._remote = self._remote_fn(ray, _ray_task).options(**self.options)
        first = members(t)[0]
        marker = str(Path(first.output_dir) / f".attempt-{uuid.uuid4().hex[:12]}")
        for m in members(t):
            on_start(m.run_id)
        ref = self._remote.remote(*self.call(t), marker, self.options["num_gpus"])
        self._pending[ref] = (t, marker)

    @property
    def busy(self) -> int:
        return len(self._pending)

    def wait(self) -> list[Outcome]:
        if not self._pending:
            return []
        import ray

        refs = list(self._pending)
        ready, _ = ray.wait(refs, num_returns=1)
        more, _ = ray.wait(refs, num_returns=len(refs), timeout=0)  # others done meanwhile
        out: list[Outcome] = []
        for ref in dict.fromkeys([*ready, *more]):
            t, marker = self._pending.pop(ref)
            out += self._outcomes(ray, ref, t, marker)
        return out

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
        if self._pending:
            import ray

            for ref in self._pending:  # the driver stopped early: do not leave runs behind
                ray.cancel(ref, force=True)
            self._pending.clear()
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
