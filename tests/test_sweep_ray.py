"""The Ray executor on a real local Ray instance, with fast fake runs: a worker that dies is
retried, an exception raised by a run is not."""

import json
import os
from pathlib import Path

import pytest
import ray
import sweep_helpers
from sweep_helpers import manifest

from kdjax.sweep import Ledger, RayExecutor, run_study


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for this module's tests (starting one takes seconds)."""
    # Workers import the fake run function by module name, from the tests directory.
    tests = str(Path(__file__).parent)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()


# group_size 8: the grid's 6 runs and the baseline go to Ray as one group (a trainer that cannot
# group, like this fake one, runs it member by member); the worker's death reruns the group.
@pytest.mark.parametrize("group_size", [1, 8])
def test_ray_sweep_retries_dead_workers_not_run_errors(tmp_path, local_ray, group_size):
    axes = {"distance": ["ce", "kl", "mse"], "alpha": [0.5, 1.0]}
    path = manifest(tmp_path, axes=axes, students=[{"name": "s1", "model": {
        "init": "random", "layers": 1, "hidden": 32, "heads": 4, "intermediate": 64,
        "tokenizer": "all-minilm-l6-v2"}}])  # fmt: skip
    executor = RayExecutor(max_retries=2, run_fn=sweep_helpers.slow)
    out = run_study(path, tmp_path / "w", executor, progress=False, group_size=group_size)
    assert ray.is_initialized()  # a Ray the caller started is left running
    assert out["done"] == 6 and out["failed"] == 2  # teacher, baseline, ce x2, kl x2; mse x2
    with Ledger(tmp_path / "w" / "ledger.sqlite") as ledger:
        crashed = ledger.rows(distance="kl", alpha=1.0)
        assert [(r["status"], r["attempts"]) for r in crashed] == [("done", 2)]
        run_dir = tmp_path / "w" / "runs" / crashed[0]["run_id"]
        assert (run_dir / "crashed-once").is_file()
        assert len((run_dir / "executions.log").read_text().split()) == 1
        failed = ledger.rows(status="failed")
        assert {r["distance"] for r in failed} == {"mse"}
        # Application errors are not retried; a dead worker retries its whole group.
        reran = 1 if group_size == 1 else 2
        for r in failed:
            assert r["attempts"] == reran
            assert r["error"].startswith("ValueError: planted application error")
        others = ledger.rows(status="done")
        assert len(others) == 6
        assert sum(r["attempts"] for r in others) == (7 if group_size == 1 else 1 + 5 * 2)
        assert all(r["host"] and r["val_metric"] is not None for r in others)


def test_ray_runs_a_plug_in_trainer_found_next_to_the_manifest(tmp_path, local_ray):
    # The workers find the module by the manifest's directory (a shared filesystem here), not
    # by PYTHONPATH; each records its process id.
    (tmp_path / "remote_trainer.py").write_text(
        "import os\n"
        "def train(cfg):\n"
        "    return {'val_metric': 0.5, 'test_metric': 0.5, 'test_correct': [1, 0],\n"
        "            'pid': os.getpid()}\n"
    )
    path = manifest(tmp_path, trainer="remote_trainer:train", axes={"alpha": [0.5, 1.0]})
    out = run_study(path, tmp_path / "w", "ray", progress=False)
    assert out["done"] == 1 + 2 * 3 and out["failed"] == 0
    with Ledger(tmp_path / "w" / "ledger.sqlite") as ledger:
        results = [json.loads(r["result_json"]) for r in ledger.rows()]
    assert all(r["trainer"] == "remote_trainer:train" for r in results)
    assert all(r["extra"]["pid"] != os.getpid() for r in results)  # ran in Ray workers
    assert all(r["test_outcomes"] == {"ids": [0, 1], "values": [1, 0]} for r in results)
