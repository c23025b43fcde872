"""`kdjax plan --hardware`: chip-hours projected from a (fake) accelerator results file."""

import json

import pytest
import yaml

from kdjax.sweep.estimate import describe_plan
from kdjax.sweep.manifest import load_manifest
from kdjax.sweep.projection import Hardware, parse_sizes, project

MANIFEST = {
    "name": "proj",
    "datasets": ["sst2"],  # preset: 64 tokens, 5% of train held out for validation
    "teacher": {"model": {"init": "pretrained", "path": "google-bert/bert-large-uncased"}},
    "students": ["bert-l4-h256"],
    "axes": {"teacher": ["hs"], "distance": ["ce"], "alpha": [0.5], "tau_t": [1.0, 2.0],
             "tau_s": ["same"]},
    "seeds": [0],
    "search": {"strategy": "grid"},
    "baseline": True,
    "train": {"default": {"epochs": 2, "batch_size": 32}},
}  # fmt: skip


def _results(tmp_path, grouped=True):
    row = lambda bench, **kw: {"bench": bench, "device": "Fake chip", **kw}
    rows = [
        row("meta", peak_tflops=100.0),
        row("student_step", model="L4/H256", seq=128, batch=32, dtype="float32", step_s=0.032,
            compile_s=36.0, mfu=0.3),
        row("student_step", model="L4/H256", seq=384, batch=32, dtype="float32", error="OOM"),
        row("teacher_step", model="L24/H1024", seq=128, batch=32, dtype="bfloat16", step_s=0.64,
            compile_s=72.0),
        row("teacher_pass", model="L24/H1024", seq=128, batch=128, dtype="bfloat16",
            step_s=0.128, compile_s=18.0),
    ]  # fmt: skip
    if grouped:
        rows += [row("grouped", group_size=k, model="L4/H256", seq=128, batch=32,
                     dtype="float32", step_s=s) for k, s in ((1, 0.04), (4, 0.08))]  # fmt: skip
    path = tmp_path / "fake.json"
    path.write_text(json.dumps({"device": "Fake chip", "rows": rows}))
    return path


def _manifest(tmp_path, **over):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({**MANIFEST, **over}))
    return load_manifest(path)


def test_projection_adds_up_the_planted_figures(tmp_path):
    """3200 train rows (160 validation), 2 epochs, 64 tokens; 2 KD runs + 1 baseline.
    Per example at 64 tokens (half the measured 128): student 0.5 ms, teacher 10 ms, teacher
    pass 0.5 ms. Student run: 200 steps x 32 x 0.5 ms = 3.2 s, evaluation (2 x 160 + 160)
    x 0.5 ms / 3 = 0.08 s, compile 36 s. Teacher: 64 s, evaluation 1.6 s, logits 3520 x 0.5 ms
    = 1.76 s, compile 72 + 18 s."""
    m = _manifest(tmp_path)
    p = project(m, tmp_path / "w", Hardware.load(_results(tmp_path)), 2, {"sst2": 3200})
    h = {k: v * 3600 for k, v in p["hours"].items()}
    assert h["student training"] == pytest.approx(3 * 3.2)
    assert h["evaluation"] == pytest.approx(3 * 0.08 + 1.6)
    # Compiled once per loss (ce, and the baseline's), cached for the second ce run.
    assert h["compilation"] == pytest.approx(2 * 36 + 90)
    assert h["teacher fine-tuning"] == pytest.approx(64)
    assert h["teacher logits"] == pytest.approx(1.76)
    assert p["total"] * 3600 == pytest.approx(sum(h.values()))
    assert p["dominant"] == "compilation" and not p["missing"]
    # Two chips: half the total, unless the teacher-then-student chain is longer.
    chain = 64 + 1.6 + 1.76 + 90 + 3.2 + 0.08 + 36
    assert p["wall_h"] * 3600 == pytest.approx(max(sum(h.values()) / 2, chain))
    assert any("seq 128->64" in n for n in p["notes"])


def test_grouping_scales_member_steps_and_compiles(tmp_path):
    m = _manifest(tmp_path, executor={"group_size": 4})
    p = project(m, tmp_path / "w", Hardware.load(_results(tmp_path)), 1, {"sst2": 3200})
    # A member-step in a group of 4 takes 0.08 / 4 / 0.04 = 0.5 of a solo step.
    assert p["hours"]["student training"] * 3600 == pytest.approx(3 * 3.2 * 0.5)


def test_unmeasured_sizes_and_bad_input_are_reported(tmp_path):
    m = _manifest(tmp_path, students=["bert-l8-h512"])
    p = project(m, tmp_path / "w", Hardware.load(_results(tmp_path)), 1, {"sst2": 3200})
    assert p["hours"]["student training"] == 0
    assert any("L8/H512" in x for x in p["missing"])
    text = describe_plan(m, tmp_path / "w", _results(tmp_path), 4, {"sst2": 3200})
    assert "projection from" in text and "not projected: student bert-l8-h512" in text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": [{"bench": "grouped"}]}))
    with pytest.raises(ValueError, match="no measured student_step"):
        Hardware.load(bad)
    with pytest.raises(ValueError, match="NAME=ROWS"):
        parse_sizes(["sst2=many"])
