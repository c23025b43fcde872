"""Grouped training inside a sweep: which runs form groups, one ledger row per member, a failing
member failing alone, and a real grouped study whose runs equal their solo runs."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import sweep_helpers as fake
from sweep_helpers import BASE, manifest

from kdjax.config import parse_config
from kdjax.sweep import Ledger, LocalExecutor, Planner, load_manifest, run_study
from kdjax.sweep.driver import memory_budget, plan_tasks
from kdjax.sweep.executors import Group, Task
from kdjax.training import train
from kdjax.training.grouped import max_group_size

GRID = {"strategy": "grid"}
AXES = {"teacher": ["hs", "ll"], "distance": ["ce", "kl", "mse"], "alpha": [0.5, 1.0]}


def _grid(tmp_path, **over):
    path = manifest(tmp_path, axes=AXES, search=GRID, **over)
    return Planner(load_manifest(path), tmp_path / "w").grid()


def _shape(tasks):
    return [len(t.members) if isinstance(t, Group) else 1 for t in tasks]


def test_groups_form_per_student_and_respect_the_cap_and_the_memory_estimate(tmp_path):
    runs = _grid(tmp_path)  # 2 students x (12 distill + the baseline, KD with alpha 0)
    assert _shape(plan_tasks(runs, 1, lambda: 2**40)) == [1] * 26
    tasks = plan_tasks(runs, 16, lambda: 2**40)
    assert _shape(tasks) == [13, 13]
    for g in tasks:
        cfgs = [parse_config(json.loads(m.config_json)) for m in g.members]
        assert len({c.model.layers for c in cfgs}) == 1
        assert len({(c.kd.distance, c.kd.alpha, c.teacher_checkpoint) for c in cfgs}) == 13
    # A cap of 5 splits 13 evenly (5+4+4, not 5+5+3); a budget for 3 members: 3+3+3+2+2.
    assert _shape(plan_tasks(runs, 5, lambda: 2**40)) == [5, 4, 4] * 2
    one_student = [r for r in runs if r.student == "s1"]
    per_member = 2**40 // max_group_size(one_student[0].config, 2**40, cap=2**40)
    three = lambda: 3 * per_member + per_member // 2
    assert _shape(plan_tasks(one_student, 16, three)) == [3, 3, 3, 2, 2]
    # Every run is in exactly one task.
    ids = [m.run_id for t in tasks for m in (t.members if isinstance(t, Group) else (t,))]
    assert sorted(ids) == sorted(r.run_id for r in runs)
    assert all(isinstance(t, Task) for t in tasks if not isinstance(t, Group))


def test_seeds_and_online_teachers_do_not_group(tmp_path):
    runs = _grid(tmp_path, seeds=[0, 1], students=[BASE["students"][0]])
    assert _shape(plan_tasks(runs, 16, lambda: 2**40)) == [13, 13]
    online = _grid(tmp_path, teacher_mode="online", students=[BASE["students"][0]])
    assert _shape(plan_tasks(online, 16, lambda: 2**40)) == [1] * 13


def test_grouped_sweep_records_one_row_per_member_and_fails_members_alone(tmp_path):
    # A trainer that cannot group runs a group member by member; the ledger cannot tell.
    path = manifest(tmp_path, axes=AXES, search=GRID, executor={"group_size": 6})
    fake.CALLS.clear()
    out = run_study(path, tmp_path / "w", LocalExecutor(fake.fails_on_mse), progress=False)
    assert out["done"] == 1 + 2 * (8 + 1) and out["failed"] == 2 * 4
    with Ledger(tmp_path / "w" / "ledger.sqlite") as ledger:
        rows = ledger.rows()
        assert len(rows) == len(set(fake.CALLS)) == 1 + 2 * 13
        failed = ledger.rows(status="failed")
        assert {r["distance"] for r in failed} == {"mse"}
        assert all(r["error"].startswith("FloatingPointError: loss became nan") for r in failed)
        assert all(r["attempts"] == 1 for r in rows)


def test_a_group_that_raises_fails_its_members_with_a_way_out(tmp_path, capsys):
    def broken(configs_json):
        raise MemoryError("RESOURCE_EXHAUSTED: out of memory (planted)")

    path = manifest(tmp_path, axes=AXES, search=GRID, students=[BASE["students"][0]])
    executor = LocalExecutor(fake.planted, group_fn=broken)
    run_study(path, tmp_path / "w", executor, progress=False, group_size=16)
    with Ledger(tmp_path / "w" / "ledger.sqlite") as ledger:
        failed = ledger.rows(status="failed")
        assert len(failed) == 13 and len(ledger.rows(status="done")) == 1  # the teacher
        head = failed[0]["error"].splitlines()[0]
        assert head == (
            "MemoryError: RESOURCE_EXHAUSTED: out of memory (planted) (in a group of 13; "
            "rerun with --retry-failed --group-size 1 to train alone)"
        )
    printed = capsys.readouterr().out
    assert printed.count("MemoryError") == 1 and "and 12 more run(s) the same way: " in printed
    fake.CALLS.clear()
    run_study(path, tmp_path / "w", LocalExecutor(fake.planted), retry_failed=True, group_size=1,
              progress=False)  # fmt: skip
    assert len(fake.CALLS) == 13
    with pytest.raises(ValueError, match="group_size must be at least 1, got 0"):
        run_study(path, tmp_path / "w2", LocalExecutor(fake.planted), group_size=0)
    assert not (tmp_path / "w2").exists()  # refused before anything is written


def test_real_grouped_study_equals_solo_runs(tmp_path):
    # Equal train and eval batch shapes, no length grouping: solo and grouped runs do the same
    # matmuls (see test_grouped.py).
    train = {"epochs": 1, "batch_size": 16, "eval_batch_size": 16, "learning_rate": 1e-3,
             "log_every": 2, "group_by_length": False}  # fmt: skip
    path = manifest(
        tmp_path,
        axes={"distance": ["ce", "kl", "mse"], "alpha": [0.5, 1.0]},  # + baseline: 7 runs
        students=[BASE["students"][0]],
        search=GRID,
        train={"default": train},
        executor={"kind": "local", "group_size": 4},
    )
    out = run_study(path, tmp_path / "w", progress=False)
    assert out["done"] == 8 and out["failed"] == 0
    with Ledger(tmp_path / "w" / "ledger.sqlite") as ledger:
        rows = [r for r in ledger.rows() if r["kind"] != "teacher"]
    assert len(rows) == 7
    sizes = []
    for r in rows:
        result = json.loads(r["result_json"])
        written = json.loads((tmp_path / "w" / "runs" / r["run_id"] / "result.json").read_text())
        assert result.pop("host") and result == written
        assert r["val_metric"] == result["validation"]["accuracy"]
        sizes.append(result["group"]["size"])
    assert sorted(sizes) == [3] * 3 + [4] * 4
    # Members (the no-KD baseline among them), trained alone, end with the same numbers.
    for member in (rows[0], next(r for r in rows if r["kind"] == "baseline")):
        _same_as_alone(member, tmp_path)


def _same_as_alone(member: dict, tmp_path: Path) -> None:
    cfg = parse_config(json.loads(member["config_json"]))
    out = str(tmp_path / "solo" / member["run_id"])
    solo = train(cfg.model_copy(update={"output_dir": out}), progress=False)
    grouped = json.loads(member["result_json"])
    for split in ("validation", "test"):
        for k, v in solo[split].items():
            np.testing.assert_allclose(grouped[split][k], v, rtol=1e-5, err_msg=f"{split} {k}")


def test_memory_budget():
    from kdjax.sweep import LocalExecutor, RayExecutor

    half_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    local, ray = LocalExecutor(), RayExecutor()
    assert memory_budget(1.5, ray) == memory_budget(1.5, local) == int(1.5 * 2**30)
    assert memory_budget(None, local) == half_ram  # CPU devices report no memory limit
    # Under Ray the budget is measured by a probe task on a worker (the slot's device), not
    # on the driver: tests/test_sweep_ray.py runs grouped studies through it.
