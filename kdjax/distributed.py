"""Multi-host runs (TPU pod slices, multi-node GPU, or several processes on one machine).

One switch: `KDJAX_DISTRIBUTED=1` (or `kdjax --distributed ...`) calls
`jax.distributed.initialize()`, which finds the coordinator itself on Cloud TPU, SLURM and
Kubernetes. Elsewhere give it explicitly with KDJAX_COORDINATOR=host:port,
KDJAX_NUM_PROCESSES and KDJAX_PROCESS_ID. KDJAX_INIT_TIMEOUT (seconds, default 300) bounds how
long a process waits for the others to join before it fails. Every process runs the same
program on the same global batch order and feeds only its own rows; only process 0 writes files.
"""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)


def requested() -> bool:
    return os.environ.get("KDJAX_DISTRIBUTED", "").lower() in ("1", "true", "yes")


def initialize(force: bool = False) -> bool:
    """Join the multi-process job when requested; returns whether this is a multi-process run."""
    if not (force or requested()):
        return False
    kwargs = {}
    if os.environ.get("KDJAX_COORDINATOR"):
        kwargs = {
            "coordinator_address": os.environ["KDJAX_COORDINATOR"],
            "num_processes": int(os.environ["KDJAX_NUM_PROCESSES"]),
            "process_id": int(os.environ["KDJAX_PROCESS_ID"]),
        }
    timeout = os.environ.get("KDJAX_INIT_TIMEOUT")
    if timeout:
        try:
            kwargs["initialization_timeout"] = int(timeout)
        except ValueError:
            raise ValueError(
                f"KDJAX_INIT_TIMEOUT must be a whole number of seconds, got {timeout!r}"
            ) from None
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    log.warning(
        "process %d of %d: %d local devices, %d global (%s)",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
    return True


def is_main() -> bool:
    """Whether this process writes outputs (process 0)."""
    return jax.process_index() == 0


def to_host(x: jax.Array):
    """A global array's full value on every process (a collective when it spans processes)."""
    import numpy as np

    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def sync(name: str) -> None:
    """A barrier across processes (nothing to do in a single-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


# Variables that say "this process is one of several of one job", set by the launchers:
# kdjax's own, srun inside a job step, Open MPI, PMI/PMIx (MPICH, Intel MPI), torchrun.
_LAUNCHER_SIZES = (
    "KDJAX_NUM_PROCESSES",
    "SLURM_STEP_NUM_TASKS",
    "OMPI_COMM_WORLD_SIZE",
    "PMI_SIZE",
    "PMIX_SIZE",
    "WORLD_SIZE",
)


def multi_process_launch(flag: bool = False, env: dict[str, str] | None = None) -> str | None:
    """Why this process looks like one of several processes of one job, or None."""
    env = os.environ if env is None else env
    if flag:
        return "--distributed was given"
    if env.get("KDJAX_DISTRIBUTED", "").lower() in ("1", "true", "yes"):
        return f"KDJAX_DISTRIBUTED={env['KDJAX_DISTRIBUTED']}"
    for name in _LAUNCHER_SIZES:
        try:
            if int(env.get(name, "1")) > 1:
                return f"{name}={env[name]}"
        except ValueError:
            continue
    return None


def refuse_study_under_distributed(flag: bool = False, env: dict[str, str] | None = None) -> None:
    """`kdjax run` is one driver for a whole study; as several processes of one job each would
    drive it (and all but one wait forever on the ledger lock or in a collective)."""
    why = multi_process_launch(flag, env)
    if why is None:
        return
    raise RuntimeError(
        f"kdjax run drives a whole study from ONE process, but this is one of several "
        f"processes of a multi-process job ({why}). Launch a study as one driver with one "
        "run per chip or GPU: start a Ray cluster (tpu/ray-start.sh on a TPU slice, "
        "gpu/ray-slurm.sbatch under Slurm) and run `kdjax run MANIFEST --executor ray "
        "--address auto --resources '{\"TPU\": 1}'` (or '{\"GPU\": 1}') once, on the head; or "
        "run it once on one machine (executor local). Multi-process jax.distributed is for a "
        "single large run: kdjax finetune / distill."
    )
