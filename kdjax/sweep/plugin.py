"""Plug-in trainers: a study whose runs are trained by the user's own function.

A manifest's `trainer: module:function` names it. kdjax calls `function(config)` for every run,
teachers included, with the run's resolved config as a plain dict (what the run's
`config.yaml` holds: task, data, model, teacher, teacher_checkpoint, kd, train with its seed,
output_dir), and records what it returns:

    {"val_metric": float, "test_metric": float,           # higher is better, kdjax's scale
     "test_correct": [0/1 or score per test example],     # optional, same order in every run
     "val_loss": float}                                   # optional

kdjax loads no model and no data for such a study. The module is looked up next to the
manifest first (`module.py` or `module/__init__.py`, dotted names as sub-directories), then on
`sys.path`; with the Ray executor it must be importable the same way on every worker (a shared
filesystem at the same path, or an installed package).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# The metric each task family reports (as kdjax's own tasks name it), without importing them.
# kdjax.training.run_dir.OUTCOMES_FILE, named here without importing the trainer's stack.
OUTCOMES_FILE = "test_outcomes.json"
TASK_METRICS = {"classification": "accuracy", "token_classification": "f1", "extractive_qa": "f1"}


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's when built with it


class TrainerResultError(ValueError):
    """A plug-in trainer returned something kdjax cannot record."""


def _module_file(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def resolve_trainer(spec: str, root: str | Path) -> Callable[[dict], Any]:
    """The function named by `spec` ('module:function'), the module found next to the
    manifest (`root`) first, then on sys.path."""
    module, _, name = spec.partition(":")
    path = _module_file(module, Path(root))
    if path is not None:
        loaded = sys.modules.get(module)
        here = Path(getattr(loaded, "__file__", None) or "").resolve()
        if loaded is None or here != path.resolve():
            s = importlib.util.spec_from_file_location(module, path)
            if s is None or s.loader is None:
                raise ImportError(f"cannot load module {module!r} from {path}")
            loaded = importlib.util.module_from_spec(s)
            sys.modules[module] = loaded
            try:
                s.loader.exec_module(loaded)
            except BaseException:
                del sys.modules[module]
                raise
    else:
        try:
            loaded = importlib.import_module(module)
        except ModuleNotFoundError as e:
            raise ImportError(
                f"module {module!r} not found next to the manifest ({root}) nor on sys.path ({e})"
            ) from None
    fn = getattr(loaded, name, None)
    if fn is None:
        raise AttributeError(f"module {module!r} ({loaded.__file__}) has no attribute {name!r}")
    if not callable(fn):
        raise TypeError(f"{spec}: {type(fn).__name__} is not callable")
    return fn


def _number(value: Any, field: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TrainerResultError(f"{where}: {field} must be a finite number, got {value!r}")
    return float(value)


def _per_example(value: Any, where: str) -> list[float] | list[int]:
    """Per-example outcomes as a list: ints where every value is whole (0/1 correct)."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != 1 or not len(arr) or isinstance(value, str | bytes):
        raise TrainerResultError(
            f"{where}: test_correct must be a non-empty list of numbers (one per test "
            f"example), got {type(value).__name__}"
        )
    bad = np.flatnonzero(~np.isfinite(arr))
    if len(bad):
        raise TrainerResultError(
            f"{where}: test_correct[{bad[0]}] must be a finite number, got {arr[bad[0]]}"
        )
    if np.all(arr == np.round(arr)):
        return arr.astype(np.int64).tolist()
    return arr.round(6).tolist()


def to_result(value: Any, cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """kdjax's result dict (what `mark_done` records) from a plug-in trainer's return value."""
    if not isinstance(value, Mapping):
        raise TrainerResultError(
            f"{where}: returned {type(value).__name__}; expected a dict with val_metric and "
            "test_metric (optional test_correct, val_loss)"
        )
    missing = [k for k in ("val_metric", "test_metric") if k not in value]
    if missing:
        raise TrainerResultError(f"{where}: the returned dict lacks {missing}")
    metric = TASK_METRICS.get(cfg.get("task"), "metric")
    val = {metric: _number(value["val_metric"], "val_metric", where)}
    if value.get("val_loss") is not None:
        val["loss"] = _number(value["val_loss"], "val_loss", where)
    test = {metric: _number(value["test_metric"], "test_metric", where)}
    extra = {k: v for k, v in value.items() if k not in _KEYS}
    try:
        json.dumps(extra)
    except (TypeError, ValueError) as e:
        raise TrainerResultError(f"{where}: extra keys must be JSON values ({e})") from None
    result: dict[str, Any] = {
        "kind": "distill" if cfg.get("teacher") else "finetune",
        "task": cfg.get("task"),
        "metric": metric,
        "validation": val,
        "test": test,
        "teacher": cfg.get("teacher"),
        "teacher_checkpoint": cfg.get("teacher_checkpoint") if cfg.get("teacher") else None,
        "kd": cfg.get("kd") if cfg.get("teacher") else None,
        "trainer": None,  # filled by the caller
        "extra": extra,
    }
    if value.get("test_correct") is not None:
        values = _per_example(value["test_correct"], where)
        result["test_outcomes"] = {"ids": list(range(len(values))), "values": values}
    return result


_KEYS = ("val_metric", "test_metric", "test_correct", "val_loss")


@dataclass(frozen=True)
class PluginTrainer:
    """A run function (config JSON -> result) around a plug-in trainer. Picklable: a Ray
    worker resolves `spec` itself."""

    spec: str
    root: str

    def __call__(self, config_json: str) -> dict[str, Any]:
        cfg = json.loads(config_json)
        out = Path(cfg["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.dump(cfg, Dumper=_DUMPER))
        fn = resolve_trainer(self.spec, self.root)
        start = time.time()
        value = fn(json.loads(config_json))  # a fresh copy: the trainer may change it
        wall = time.time() - start
        result = to_result(value, cfg, f"trainer {self.spec} (run {out.name})")
        result.update(trainer=self.spec, train_time_s=round(wall, 4), wall_time_s=round(wall, 4))
        result["host"] = socket.gethostname()
        write_outcomes(out, result.get("test_outcomes"))
        (out / "result.json").write_text(json.dumps(result, separators=(",", ":")) + "\n")
        return result


def write_outcomes(run_dir: Path, outcomes: dict[str, Any] | None) -> None:
    """The per-example test outcomes next to the run's result (compact JSON)."""
    if outcomes is not None:
        text = json.dumps(outcomes, separators=(",", ":"))
        (Path(run_dir) / OUTCOMES_FILE).write_text(text + "\n")
