"""Study sweeps: manifest → plan → executors → ledger, driven by `run_study`.

Names are imported on first use, so a Ray worker that unpickles `kdjax.sweep.executors` does
not pay for the trainer's imports.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "run_study": "driver",
    "Executor": "executors",
    "LocalExecutor": "executors",
    "Outcome": "executors",
    "RayExecutor": "ray_exec",
    "Task": "executors",
    "execute": "executors",
    "Ledger": "ledger",
    "Manifest": "manifest",
    "load_manifest": "manifest",
    "validate_manifest": "manifest",
    "Planner": "plan",
    "Run": "plan",
    "choose": "plan",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kdjax.sweep' has no attribute {name!r}")
    return getattr(import_module(f"kdjax.sweep.{_EXPORTS[name]}"), name)
