"""Scale-out on this machine: one driver, a local Ray head posing as a 4-chip TPU host
(`resources={"TPU": 4}`), fake runs that sleep and record their own start and end times."""

import json
import os
import time
from pathlib import Path

import pytest
import ray
import sweep_helpers as fake
from sweep_helpers import manifest

from kdjax.config import ConfigError
from kdjax.sweep import Ledger, run_study
from kdjax.sweep.ray_exec import RayExecutor, gpu_share_env, split_request, tpu_env

TESTS = str(Path(__file__).parent)


@pytest.fixture(scope="module")
def tpu_host():
    """A local Ray head with 4 fake TPU chips; workers import the fake runs from tests/."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([TESTS, old or ""])
    ray.init(num_cpus=4, resources={"TPU": 4}, include_dashboard=False, log_to_driver=False)
    # Four worker processes up before the tests (a cluster's are long-lived): the slot test
    # measures the driver and executor, not Ray starting its worker pool.
    ray.get([ray.remote(_nap).remote(0.5) for _ in range(4)])
    try:
        yield
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old


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


def test_one_chip_per_run_keeps_four_slots_busy(tpu_host, tmp_path):
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
    tpu_host, tmp_path
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


def test_dataset_a_trains_while_teacher_b_trains_and_each_cache_is_built_once(tpu_host, tmp_path):
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
def test_a_request_no_node_can_meet_fails_within_seconds(tpu_host, tmp_path, request_, missing):
    gpus = request_.pop("GPU", 0)
    executor = RayExecutor(num_gpus=gpus, resources=request_, run_fn=fake.timed)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="no node of the Ray cluster has " + missing):
        run_study(manifest(tmp_path), tmp_path / "w", executor, progress=False)
    assert time.monotonic() - start < 10
    with Ledger(tmp_path / "w" / "ledger.sqlite") as ledger:
        assert ledger.rows(status="done") == []


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
