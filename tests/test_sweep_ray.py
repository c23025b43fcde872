"""The Ray executor on a real local Ray instance posing as a 4-chip TPU host
(`resources={"TPU": 4}`), with fast fake runs: a worker that dies is retried, an exception
raised by a run is not; one chip per run keeps the slots busy, pairs and datasets advance on
their own, a request no node can meet fails at once."""

import json
import os
import time
from pathlib import Path

import pytest
import ray
import sweep_helpers
from sweep_helpers import manifest

from kdjax.config import ConfigError
from kdjax.sweep import Ledger, RayExecutor, run_study
from kdjax.sweep.ray_exec import gpu_share_env, split_request, tpu_env

fake = sweep_helpers


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for this module's tests (starting one takes seconds)."""
    # Workers import the fake run function by module name, from the tests directory.
    tests = str(Path(__file__).parent)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
        ray.init(num_cpus=4, resources={"TPU": 4}, include_dashboard=False, log_to_driver=False)
        # Four worker processes up before the tests (a cluster's are long-lived): the slot
        # test measures the driver and executor, not Ray starting its worker pool.
        ray.get([ray.remote(_nap).remote(0.5) for _ in range(4)])
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


def timings(workdir: Path, kinds=("distill", "baseline")) -> list[dict]:
    with Ledger(workdir / "ledger.sqlite") as ledger:
        rows = [r for r in ledger.rows(status="done") if r["kind"] in kinds]
    out = []
    for r in rows:
        rec = json.loads((workdir / "runs" / r["run_id"] / "timing.json").read_text())
        keys = ("run_id", "student", "stage", "dataset", "teacher_checkpoint", "kind")
        out.append({**rec, **{k: r[k] for k in keys}})
    return out


def mean_busy(records: list[dict], t0: float, t1: float) -> float:
    """Time-averaged number of runs in progress over [t0, t1]."""
    total = sum(max(0.0, min(r["end"], t1) - max(r["start"], t0)) for r in records)
    return total / (t1 - t0)


def test_one_chip_per_run_keeps_four_slots_busy(local_ray, tmp_path):
    axes = {"distance": ["ce", "kl"], "alpha": [0.5, 1.0]}
    # Online teacher: no logit cache, whose first user would run alone (tested below).
    path = manifest(tmp_path, axes=axes, seeds=[0, 1], train={"default": {"epochs": 2}},
                    teacher_mode="online")  # fmt: skip
    # The fake runs touch no device, so workers are reused: a fresh worker per task (the default
    # with an accelerator) costs seconds here, on a loaded 2-core machine, against sub-second
    # runs; on a TPU host it costs seconds against minutes of training.
    executor = RayExecutor(resources={"TPU": 1}, run_fn=fake.timed, fresh_workers=False)
    out = run_study(path, tmp_path / "w", executor, progress=False)
    assert out["failed"] == 0 and out["done"] == 1 + 2 * 2 * 5
    recs = timings(tmp_path / "w")
    # While runs were still waiting for a slot (until the last one started), >= 3 of the 4
    # chips were busy on average (each run's own start/end; worker start-up counts as idle).
    t0, t1 = min(r["start"] for r in recs), max(r["start"] for r in recs)
    busy = mean_busy(recs, t0, t1)
    assert busy >= 3.0, f"mean busy slots {busy:.2f} of 4"
    # Each run saw one chip, as a one-process TPU job; runs at the same time, different chips.
    for r in recs:
        assert r["tpu"]["TPU_VISIBLE_CHIPS"] in {"0", "1", "2", "3"}
        assert r["tpu"]["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,1,1"
        assert r["tpu"]["TPU_PROCESS_BOUNDS"] == "1,1,1"
    for a in recs:
        for b in recs:
            if a is not b and a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["tpu"]["TPU_VISIBLE_CHIPS"] != b["tpu"]["TPU_VISIBLE_CHIPS"]
                assert a["tpu"]["TPU_PROCESS_PORT"] != b["tpu"]["TPU_PROCESS_PORT"]


def test_a_fast_pair_finishes_its_search_while_a_slow_pair_is_in_its_first_stage(
    local_ray, tmp_path
):
    """No barrier between pairs: s1 (0.4 s runs) goes through every greedy stage and its
    sensitivity stage while s2 still trains its default point and baseline (4 s each)."""
    students = [{"name": "s1", "model": fake.tiny(1)}, {"name": "s2", "model": fake.tiny(10)}]
    search = {"strategy": "greedy", "order": ["distance", "alpha"], "transfer": False}
    path = manifest(tmp_path, students=students, search=search)
    executor = RayExecutor(resources={"TPU": 1}, run_fn=fake.timed, fresh_workers=False)
    out = run_study(path, tmp_path / "w", executor, progress=False)
    assert out["failed"] == 0
    recs = timings(tmp_path / "w")
    fast = [r for r in recs if r["student"] == "s1"]
    slow_first = [r for r in recs if r["student"] == "s2" and r["stage"].startswith("0:")]
    assert {r["stage"] for r in fast} >= {"0:default", "0:baseline", "1:distance", "2:alpha"}
    assert len(fast) >= 4 and len(slow_first) == 2
    assert max(r["end"] for r in fast) < min(r["end"] for r in slow_first)
    assert any(r["stage"] == "sensitivity" for r in fast)


def test_dataset_a_trains_while_teacher_b_trains_and_each_cache_is_built_once(local_ray, tmp_path):
    """Teacher B takes 3 s; dataset A's students run meanwhile. Per (dataset, teacher
    checkpoint) the first run builds the logit cache alone; the others start after it."""
    a = fake.BASE["datasets"][0]
    b = {**a, "name": "slow", "data": {**a["data"], "max_length": 64}}
    search = {"strategy": "greedy", "order": ["teacher"], "transfer": False, "sensitivity": False}
    path = manifest(tmp_path, datasets=[a, b], axes={"teacher": ["hs", "ll"]}, search=search)
    executor = RayExecutor(resources={"TPU": 1}, run_fn=fake.timed, fresh_workers=False)
    assert run_study(path, tmp_path / "w", executor, progress=False)["failed"] == 0
    recs = timings(tmp_path / "w", kinds=("teacher", "distill", "baseline"))
    teacher_b = next(r for r in recs if r["kind"] == "teacher" and r["dataset"] == "slow")
    students_a = [r for r in recs if r["kind"] != "teacher" and r["dataset"] == "sent"]
    assert min(r["end"] for r in students_a) < teacher_b["end"]
    for dataset in ("sent", "slow"):
        for ckpt in ("hs", "ll"):
            users = [r for r in recs if r["kind"] != "teacher" and r["dataset"] == dataset]
            runs = sorted((r for r in users if r["teacher_checkpoint"] == ckpt),
                          key=lambda r: r["start"])  # fmt: skip
            assert len(runs) >= 2 and runs[0]["end"] <= runs[1]["start"], (dataset, ckpt)


@pytest.mark.parametrize("request_, missing", [({"TPU": 8}, "TPU >= 8"), ({"GPU": 0.5}, "GPU")])
def test_a_request_no_node_can_meet_fails_within_seconds(local_ray, tmp_path, request_, missing):
    gpus = request_.pop("GPU", 0)
    executor = RayExecutor(num_gpus=gpus, resources=request_, run_fn=fake.timed)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="no node of the Ray cluster has " + missing):
        run_study(manifest(tmp_path), tmp_path / "w", executor, progress=False)
    assert time.monotonic() - start < 10
    with Ledger(tmp_path / "w" / "ledger.sqlite") as ledger:
        assert ledger.rows(status="done") == []
    # The same request given as `kdjax run --resources` (which implies the Ray executor).
    with pytest.raises(RuntimeError, match="no node of the Ray cluster has " + missing):
        wanted = {**request_, **({"GPU": gpus} if gpus else {})}
        run_study(manifest(tmp_path), tmp_path / "w", run_fn=fake.timed, resources=wanted,
                  progress=False)  # fmt: skip


def test_resource_requests_are_checked():
    assert split_request({"GPU": 0.5, "TPU": 4}) == {"GPU": 0.5, "TPU": 4.0}
    for bad, msg in (
        ({"TPU": 3}, "--resources.TPU: 3 chips; Ray allows 1, 2, 4, 8"),
        ({"GPU": 1.5}, "--resources.GPU: 1.5; a fraction up to 1"),
        ({"GPU": -1}, "--resources.GPU: must be a number >= 0"),
    ):
        with pytest.raises(ConfigError, match=msg.replace(".", r"\.")):
            split_request(bad)
    env = tpu_env([4, 5, 6, 7])
    assert env["TPU_VISIBLE_CHIPS"] == "4,5,6,7" and env["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "2,2,1"
    assert env["TPU_PROCESS_BOUNDS"] == env["TPU_HOST_BOUNDS"] == "1,1,1"
    assert tpu_env(list(range(8)))["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "2,4,1"
    # Half a GPU: JAX's preallocation capped at the share, so two runs fit on one GPU.
    assert gpu_share_env(0.5) == {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.475"}
    assert gpu_share_env(1) == gpu_share_env(0) == {}


def _nap(seconds: float) -> None:
    time.sleep(seconds)
