"""The sweep engine with fake run functions: manifests, plans, greedy search, failures, resume."""

import copy
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import sweep_helpers as fake
import yaml
from sweep_helpers import BASE, manifest

from kdjax.config import ConfigError
from kdjax.sweep import Ledger, LocalExecutor, Planner, load_manifest, run_study, validate_manifest
from kdjax.sweep.cli import main as sweep_main
from kdjax.sweep.plan import choose
from kdjax.sweep.summary import KD_KEY, best_per_pair

ROOT = Path(__file__).resolve().parent.parent


def fails(**over):
    d = copy.deepcopy(BASE)
    d.update(over)
    with pytest.raises(ConfigError) as e:
        validate_manifest(d, "m.yaml")
    return str(e.value)


@pytest.mark.parametrize(
    "over, expected",
    [
        ({"axis": {}}, "axis: unknown key"),
        ({"axes": {"beta": [1]}}, "axes.beta: unknown key"),
        ({"datasets": ["sst3"]}, "datasets.0.name: unknown dataset preset 'sst3'; allowed: "),
        ({"datasets": ["sst2", "sst2"]}, "datasets: duplicate names ['sst2']"),
        ({"datasets": [{"name": "sst2", "overrides": {"max_length": 4}}]},
         "datasets.0.overrides.max_length: Input should be greater than or equal to 8"),
        ({"datasets": [{"name": "x", "data": {"source": "files"}}]}, "datasets.0.task: required"),
        ({"students": ["bert-tiny"]}, "students.0.name: unknown student preset 'bert-tiny'"),
        ({"teacher": {"model": {"init": "pretrained"}}}, "teacher.model.path: Field required"),
        ({"axes": {"distance": ["ce", "hellinger"]}},
         "axes.distance.1: unknown distance 'hellinger'; allowed: ce, cosine, js, kl"),
        ({"axes": {"alpha": []}}, "axes.alpha: empty list; give at least one value"),
        ({"axes": {"alpha": [0.5, 1.5]}}, "axes.alpha.1: Input should be less than or equal to 1"),
        ({"axes": {"tau_t": [1, 1.0]}}, "axes.tau_t: duplicate values ['1.0']"),
        ({"axes": {"tau_s": ["same", 0]}}, "axes.tau_s.1: must be a number > 0 or 'same', got 0"),
        ({"axes": {"teacher": ["best"]}}, "axes.teacher.0: Input should be 'hs' or 'll'"),
        ({"seeds": [0, 0]}, "seeds: duplicate values"),
        ({"train": {"classification": {"epoch": 2}}}, "train.classification.epoch: unknown key"),
        ({"train": {"default": {"seed": 3}}}, "train.default.seed: set seeds with the top-level"),
        ({"search": {"strategy": "greedy", "order": ["distance", "beta"]}},
         "search.order.1: unknown axis 'beta'"),
        ({"search": {"strategy": "greedy", "order": ["distance", "alpha", "tau_t"]}},
         "search.order.2: axis 'tau_t' is not swept"),
        ({"search": {"strategy": "greedy", "order": ["distance"]}},
         "search.order: swept axes missing: ['alpha']"),
        ({"search": {"strategy": "grid", "order": ["distance"]}}, "search.order: only used with"),
        ({"executor": {"kind": "slurm"}}, "executor.kind: Input should be 'local' or 'ray'"),
        ({"executor": {"group_size": 0}},
         "executor.group_size: Input should be greater than or equal to 1"),
    ],
)  # fmt: skip
def test_bad_manifest_names_the_field(over, expected):
    msg = fails(**over)
    assert msg.startswith("m.yaml: invalid")
    assert expected in msg, msg


def test_includes_merge_and_conflicts_name_both_files(tmp_path):
    base = {k: v for k, v in BASE.items() if k != "axes"}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "axes.yaml").write_text(yaml.safe_dump({"axes": {"alpha": [0.5, 1.0]}}))
    main = {"include": ["base.yaml", "axes.yaml"], "axes": {"distance": ["ce", "kl"]}, "name": "t"}
    (tmp_path / "main.yaml").write_text(yaml.safe_dump(main))
    m = load_manifest(tmp_path / "main.yaml")  # same name twice is fine; axes merge key by key
    assert m.axes.alpha == (0.5, 1.0) and m.axes.distance == ("ce", "kl")
    main["axes"]["alpha"] = [1.0]
    (tmp_path / "main.yaml").write_text(yaml.safe_dump(main))
    with pytest.raises(ConfigError) as e:
        load_manifest(tmp_path / "main.yaml")
    msg = str(e.value)
    assert msg.startswith("axes.alpha: set differently in ") and "set it in one place" in msg
    assert str(tmp_path / "axes.yaml") in msg and str(tmp_path / "main.yaml") in msg


@pytest.mark.parametrize("name, pairs", [("smoke", 1), ("demo", 1), ("paper", 39)])
def test_shipped_manifests_validate_and_plan(name, pairs, tmp_path):
    m = load_manifest(ROOT / "experiments" / f"{name}.yaml")
    planner = Planner(m, tmp_path)
    assert len(planner.pairs()) == pairs and len(planner.teachers) == len(m.datasets)
    stage = planner.greedy_stage(0, {p: planner.default_point() for p in planner.pairs()})
    assert len(stage.runs) == pairs * len(m.seeds) * 2  # default point + baseline
    for r in stage.runs:
        assert Path(r.config.teacher) == tmp_path.resolve() / "runs" / r.teacher_run


def test_grid_counts_and_baselines_are_one_run(tmp_path):
    axes = {"teacher": ["hs", "ll"], "distance": ["ce", "kl"], "alpha": [0, 0.5, 1.0],
            "tau_t": [1, 2], "tau_s": ["same", 1]}  # fmt: skip
    m = load_manifest(manifest(tmp_path, axes=axes, seeds=[0, 1]))
    runs = Planner(m, tmp_path / "w").grid()
    # Per pair and seed: at tau_t 1, tau_s 1 is 'same' (one run): 2 * 2 * 2 * (1 + 2) = 24
    # KD runs; alpha 0 and the explicit baseline collapse into one baseline run.
    kinds = Counter(r.kind for r in runs)
    assert kinds == {"distill": 2 * 2 * 24, "baseline": 2 * 2}
    assert len({r.run_id for r in runs}) == len(runs)
    base = [r for r in runs if r.kind == "baseline"]
    assert {(r.student, r.seed) for r in base} == {(s, k) for s in ("s1", "s2") for k in (0, 1)}
    assert all(r.config.kd.alpha == 0 for r in base)


def test_run_ids_are_stable_and_independent_of_workdir(tmp_path):
    path = manifest(tmp_path)
    a = Planner(load_manifest(path), tmp_path / "a").grid()
    b = Planner(load_manifest(path), tmp_path / "b").grid()
    assert [r.run_id for r in a] == [r.run_id for r in b]
    assert a[0].config.output_dir == str((tmp_path / "a" / "runs" / a[0].run_id).resolve())
    code = (
        "import sys; from kdjax.sweep import Planner, load_manifest;"
        "print(' '.join(r.run_id for r in Planner(load_manifest(sys.argv[1]), sys.argv[2]).grid()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), "/elsewhere"], capture_output=True, text=True
    )
    assert out.stdout.split() == [r.run_id for r in a], out.stderr


def test_choose_prefers_incumbent_on_ties():
    opts = {("a",): ["1"], ("b",): ["2"], ("c",): ["3", "4"]}
    assert choose(opts, {"1": 0.5, "2": 0.5, "3": 0.4}, ("b",)) == ("b",)
    assert choose(opts, {"1": 0.5, "3": 0.9, "4": 0.3}, ("a",)) == ("c",)  # mean 0.6
    assert choose(opts, {}, ("a",)) is None


def test_greedy_finds_the_planted_best_and_runs_each_config_once(tmp_path):
    axes = {"teacher": ["hs", "ll"], "distance": ["ce", "kl", "mse"], "alpha": [0.5, 1.0],
            "tau_t": [1, 2, 4], "tau_s": ["same", 1]}  # fmt: skip
    search = {"strategy": "greedy", "order": ["teacher", "distance", "alpha", "tau_t", "tau_s"]}
    path = manifest(tmp_path, axes=axes, seeds=[0, 1], search=search)
    fake.CALLS.clear()
    out = run_study(path, tmp_path / "w", LocalExecutor(fake.planted), progress=False)
    calls = Counter(fake.CALLS)
    assert max(calls.values()) == 1  # no config ran twice
    # Per pair and seed: 1 default + 1 teacher + 2 distance + 1 alpha + 2 tau_t + 1 tau_s + 1
    # baseline; sensitivity around (ll, kl|mse, 1, 2, same): teacher hs, the two other
    # distances and alpha 0.5 are new (tau_t 1/4 and tau_s 1 ran in their stages); transfer:
    # the two winners ran in each other's sensitivity stage, the reference (ll, ce, 1, 2, 1) is new.
    assert len(calls) == 1 + 2 * 2 * (9 + 4 + 1) and out["done"] == len(calls)
    # The bar's total is the study's planned run count up front (an upper bound: stages reuse
    # their incumbent's runs), corrected to the true count as stages are known.
    assert out["planned_total"] == 1 + 2 * (4 + 2 * (1 + 2 + 1 + 2 + 1 + 6)) + 4 * 2 * 2
    assert out["total"] == len(calls)
    with Ledger(tmp_path / "w" / "ledger.sqlite") as ledger:
        rows = ledger.rows()
        assert len(rows) == len(calls) and all(r["status"] == "done" for r in rows)
        students = [r for r in rows if r["kind"] != "teacher"]
        assert all(r["stage"] for r in students)
        # The summary's best configuration per pair is the validation-best (test is
        # anti-correlated with validation in these fake results).
        for pair, best in best_per_pair(rows).items():
            by_config = defaultdict(list)
            for r in students:
                if (r["dataset"], r["student"]) == pair and r["kind"] == "distill":
                    by_config[tuple(r[k] for k in KD_KEY)].append(r["val_metric"])
            assert best["best"]["val"] == max(sum(v) / len(v) for v in by_config.values())
        assert Counter(r["stage"] for r in students) == {
            "0:default": 4, "0:baseline": 4, "1:teacher": 4, "2:distance": 8, "3:alpha": 4,
            "4:tau_t": 8, "5:tau_s": 4, "sensitivity": 16, "transfer": 4,
        }  # fmt: skip
    search_json = json.loads((tmp_path / "w" / "search.json").read_text())
    assert [e["stage"] for e in search_json][-2:] == ["sensitivity", "transfer"]
    final = search_json[-3]["best"]
    assert final == {"sent/s1": ["ll", "kl", 1.0, 2.0, "same"],
                     "sent/s2": ["ll", "mse", 1.0, 2.0, "same"]}  # fmt: skip
    sens = search_json[-2]
    assert sens["best"] == final and sens["optimum"] == {"sent/s1": True, "sent/s2": True}
    # The optimum and 1 + 2 + 1 + 2 + 1 one-knob variants, each with both seeds' runs.
    assert all(len(o) == 8 and all(len(ids) == 2 for _, ids in o) for o in sens["options"].values())
    cands = {tuple(c["config"]): c["why"] for c in search_json[-1]["candidates"]}
    assert cands[("ll", "kl", 1.0, 2.0, "same")][0] == "winner on 1 of 2 pairs"
    assert cands[("ll", "ce", 1.0, 2.0, 1.0)] == ["reference study's recommendation"]
    assert len(cands) == 3  # the axis-by-axis best is one of the two winners here
    # A second run finds everything done: nothing executes.
    fake.CALLS.clear()
    run_study(path, tmp_path / "w", LocalExecutor(fake.planted), progress=False)
    assert fake.CALLS == []


def test_failures_are_recorded_and_retried_on_request(tmp_path, capsys):
    path = manifest(tmp_path, axes={"distance": ["ce", "mse"]}, students=[BASE["students"][0]])
    fake.CALLS.clear()
    run_study(path, tmp_path / "w", LocalExecutor(fake.fails_on_mse), progress=False)
    with Ledger(tmp_path / "w" / "ledger.sqlite") as ledger:
        failed = ledger.rows(status="failed")
        assert [r["distance"] for r in failed] == ["mse"] and failed[0]["attempts"] == 1
        assert failed[0]["error"].startswith("FloatingPointError: loss became nan at step 3")
        assert {r["status"] for r in ledger.rows(status=["done"])} == {"done"}
        assert len(ledger.rows(status="done")) == 3  # teacher, baseline, ce
    assert sweep_main(["status", str(tmp_path / "w")]) == 0
    assert "FloatingPointError: loss became nan" in capsys.readouterr().out
    fake.CALLS.clear()
    run_study(path, tmp_path / "w", LocalExecutor(fake.planted), progress=False)  # no retry
    assert fake.CALLS == []
    run_study(path, tmp_path / "w", LocalExecutor(fake.planted), retry_failed=True, progress=False)
    assert fake.CALLS == [failed[0]["run_id"]]
    with Ledger(tmp_path / "w" / "ledger.sqlite") as ledger:
        row = ledger.get(failed[0]["run_id"])
        assert row["status"] == "done" and row["attempts"] == 2 and row["error"] is None


def test_students_of_a_failed_teacher_are_not_attempted(tmp_path):
    def teacher_fails(config_json):
        if json.loads(config_json).get("teacher") is None:
            raise RuntimeError("out of memory (planted)")
        return fake.planted(config_json)

    fake.CALLS.clear()
    run_study(manifest(tmp_path), tmp_path / "w", LocalExecutor(teacher_fails), progress=False)
    assert fake.CALLS == []
    with Ledger(tmp_path / "w" / "ledger.sqlite") as ledger:
        rows = ledger.rows(kind=["distill", "baseline"])
        assert rows and all(r["status"] == "failed" and r["attempts"] == 0 for r in rows)
        assert all(r["error"].startswith("TeacherNotDone: teacher run ") for r in rows)


class Abort(KeyboardInterrupt):
    pass


def test_resume_after_abort_runs_each_run_once(tmp_path):
    path = manifest(tmp_path, search={"strategy": "greedy", "order": ["distance", "alpha"]})
    done_first = []

    def abort_after_4(config_json):
        if len(done_first) == 4:
            raise Abort()
        result = fake.planted(config_json)
        done_first.append(fake.CALLS[-1])
        return result

    fake.CALLS.clear()
    with pytest.raises(Abort):
        run_study(path, tmp_path / "w", LocalExecutor(abort_after_4), progress=False)
    with Ledger(tmp_path / "w" / "ledger.sqlite") as ledger:
        assert len(ledger.rows(status="done")) == 4 and len(ledger.rows(status="running")) == 1
        finished = {r["run_id"]: r["finished_at"] for r in ledger.rows(status="done")}
    fake.CALLS.clear()
    out = run_study(path, tmp_path / "w", LocalExecutor(fake.planted), progress=False)
    assert not set(fake.CALLS) & set(done_first) and len(set(fake.CALLS)) == len(fake.CALLS)
    with Ledger(tmp_path / "w" / "ledger.sqlite") as ledger:
        rows = ledger.rows()
        assert len(rows) == len(set(out["runs"])) == 4 + len(fake.CALLS)
        assert all(r["status"] == "done" for r in rows)
        assert {i: ledger.get(i)["finished_at"] for i in finished} == finished
        assert sum(r["attempts"] for r in rows) == len(rows) + 1  # the interrupted one ran twice
        csv = ledger.export_csv(tmp_path / "ledger.csv").read_text().splitlines()
        assert csv[0].startswith("run_id,kind,status,config_json") and len(csv) > len(rows)


def test_plan_command_prints_counts(tmp_path, capsys):
    path = manifest(tmp_path, search={"strategy": "greedy", "order": ["distance", "alpha"]})
    assert sweep_main(["plan", str(path), "--workdir", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "teacher runs: 1" in out and "logit caches: 1" in out
    assert "1:distance   2" in out and "sensitivity  2" in out and "transfer     8" in out
    assert "student runs: at most 18" in out
    assert "grouped training: off (executor.group_size 1)" in out
    assert "48 teacher + 864 student example-epochs" in out
    assert "warning: axes.distance: ce and kl train identically" in out
    assert sweep_main(["plan", str(tmp_path / "missing.yaml")]) == 2


def test_one_driver_per_workdir(tmp_path):
    from kdjax.sweep.driver import _driver_lock

    (tmp_path / "w").mkdir()
    with _driver_lock(tmp_path / "w"):
        with pytest.raises(RuntimeError, match=r"another driver \(pid \d+\) is running"):
            run_study(manifest(tmp_path), tmp_path / "w", LocalExecutor(fake.planted))
    run_study(manifest(tmp_path), tmp_path / "w", LocalExecutor(fake.planted), progress=False)
