"""A run's output directory: resolved config, metrics log, checkpoints, exported model, result.

Checkpoints (Orbax), one manager each, one step kept:
  checkpoints/hs    params of the epoch with the highest validation score
  checkpoints/ll    params of the epoch with the lowest validation loss
  checkpoints/last  the full train state after the latest epoch, with the loop's host state,
                    so that a killed run resumes at its next epoch instead of starting over
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
import yaml
from flax import nnx

from kdjax.distributed import is_main, sync

log = logging.getLogger(__name__)

CHECKPOINTS = ("hs", "ll")
OUTCOMES_FILE = "test_outcomes.json"  # per-example test outcomes: {"ids": [...], "values": [...]}
# What a run writes into its directory (besides config.yaml).
OUTPUTS = ("checkpoints", "metrics.jsonl", "result.json", "model", OUTCOMES_FILE)


def _manager(path: Path) -> ocp.CheckpointManager:
    path = path.absolute()
    # In a multi-process run Orbax names its cross-process barriers by step; managers that save
    # the same step at once (hs, ll and last of one epoch, or the members of a group) would share
    # barriers and fail. A prefix from the directory keeps each manager's barriers its own.
    prefix = "kdjax-" + hashlib.sha1(str(path).encode()).hexdigest()[:16]
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1,
        create=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix),
    )
    return ocp.CheckpointManager(path, options=options)


def restore_params(run: Path, which: str, target) -> Any:
    """Params saved as checkpoint `which` (hs/ll) of the run in `run`, restored into the shape
    and sharding of `target` (an nnx.State)."""
    path = Path(run) / "checkpoints" / which
    with _manager(path) as mngr:
        step = mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"teacher: no {which!r} checkpoint in {path}")
        restored = mngr.restore(step, args=ocp.args.StandardRestore(nnx.to_pure_dict(target)))
    nnx.replace_by_pure_dict(target, restored)
    return target


class RunDir:
    def __init__(self, path: str | Path, config: dict[str, Any]):
        self.dir = Path(path)
        self.config = config
        self.main = is_main()  # only process 0 writes files; Orbax coordinates checkpoints
        saved = self.dir / "config.yaml"
        same = saved.is_file() and yaml.safe_load(saved.read_text()) == config
        if self.main and not same and (saved.is_file() or (self.dir / "checkpoints").exists()):
            # Nothing of the other run may leak into this one: no resume, no mixed metrics log.
            log.warning("%s holds a run with another config; starting over", self.dir)
            for name in OUTPUTS:
                path = self.dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        sync("kdjax-run-dir")
        if self.main:
            self.dir.mkdir(parents=True, exist_ok=True)
            saved.write_text(yaml.safe_dump(config))
        self.managers = {n: _manager(self.dir / "checkpoints" / n) for n in (*CHECKPOINTS, "last")}
        self.metrics = (self.dir / "metrics.jsonl").open("a") if self.main else None

    def log(self, **row: Any) -> None:
        if self.metrics is not None:
            self.metrics.write(json.dumps(row) + "\n")
            self.metrics.flush()

    def write_text(self, name: str, text: str) -> None:
        if self.main:
            tmp = self.dir / f"{name}.tmp"
            tmp.write_text(text + "\n")
            tmp.replace(self.dir / name)

    def save_params(self, which: str, epoch: int, params) -> None:
        self.managers[which].save(epoch, args=ocp.args.StandardSave(nnx.to_pure_dict(params)))

    def end_epoch(self, epoch: int, val: dict, metric: str, state, host: dict[str, Any]) -> None:
        """Record epoch `epoch`'s validation metrics in `host`, checkpoint its params where it
        is the best so far (hs: highest (metric, -loss); ll: lowest loss), then the full state."""
        host["history"].append({"epoch": epoch, **val})
        for which, score in (("hs", [val[metric], -val["loss"]]), ("ll", [-val["loss"]])):
            if host[which] is None or score > host[which]["score"]:
                host[which] = {"epoch": epoch, "score": score}
                self.save_params(which, epoch, state.params)
        host["epoch"] = epoch
        self.save_last(epoch, state, host)

    def save_last(self, epoch: int, state, host: dict[str, Any]) -> None:
        """The full train state and the loop's host-side state (history, bests) after `epoch`."""
        # hs/ll first: once `last` says epoch N is finished, its hs/ll saves are complete.
        for which in CHECKPOINTS:
            self.managers[which].wait_until_finished()
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_pure_state(state)), host=ocp.args.JsonSave(host)
        )
        # Waited for: a run killed right after this returns must resume after `epoch` (the
        # hs/ll params above were written in the background, overlapping this write).
        self.managers["last"].save(epoch, args=args)
        self.managers["last"].wait_until_finished()

    def resume(self, state):
        """(state, host) from the last finished epoch, or None when there is none."""
        mngr = self.managers["last"]
        step = mngr.latest_step()
        if step is None:
            return None
        target = _pure_state(state)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(target), host=ocp.args.JsonRestore()
        )
        restored = mngr.restore(step, args=args)
        return _replace_state(state, restored["state"]), restored["host"]

    def close(self, result: dict[str, Any]) -> None:
        for mngr in self.managers.values():
            mngr.wait_until_finished()
            mngr.close()
        if self.metrics is None:
            return
        self.metrics.close()
        tmp = self.dir / "result.json.tmp"
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(self.dir / "result.json")


def _pure_state(state):
    return {
        "params": nnx.to_pure_dict(state.params),
        "opt_state": state.opt_state,
        "step": state.step,
    }


def _replace_state(state, restored):
    nnx.replace_by_pure_dict(state.params, restored["params"])
    return state._replace(opt_state=restored["opt_state"], step=restored["step"])
