"""benchmarks/accelerator.py --tiny runs every part on CPU and writes its JSON schema."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"benchmarks_{name}", ROOT / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"benchmarks_{name}"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_accelerator_benchmark_tiny_runs_every_part(tmp_path, capsys):
    bench = _load("accelerator")
    out = tmp_path / "results" / "cpu.json"
    rows = bench.main(["--tiny", "--out", str(out), "--peak-tflops", "1"])
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    saved = json.loads(out.read_text())
    assert printed == rows == saved["rows"] and saved["device"] == rows[0]["device"]
    assert all({"bench", "device"} <= set(r) for r in rows)
    assert not [r for r in rows if "error" in r or "skipped" in r]
    kinds = {r["bench"] for r in rows}
    assert kinds == {"meta", "student_step", "teacher_pass", "grouped", "torch_step", "end"}
    for r in rows:
        if r["bench"] in ("student_step", "teacher_pass", "teacher_step", "grouped"):
            # MFU from the compiled program's FLOPs over the given peak (1 TFLOP/s here).
            assert r["flops_per_step"] > 0 and r["step_s"] > 0
            assert r["mfu"] == pytest.approx(r["flops_per_step"] / r["step_s"] / 1e12, rel=1e-2)
        if r["bench"] in ("student_step", "teacher_pass", "teacher_step", "torch_step"):
            assert r["examples_per_s"] > 0
    assert {r["task"] for r in rows if r["bench"] == "student_step"} == {"extractive_qa"}
    groups = [r for r in rows if r["bench"] == "grouped"]
    assert [r["group_size"] for r in groups] == list(bench.TINY.group_sizes)
    for r in groups:
        assert r["examples_per_s_total"] == pytest.approx(
            r["examples_per_s_per_member"] * r["group_size"], rel=1e-3
        )


def test_peak_table_and_bad_arguments():
    bench = _load("accelerator")
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bench.peak_tflops("NVIDIA L4") == 121.0
    assert bench.peak_tflops("NVIDIA L40S") is None  # not mistaken for an L4
    assert bench.peak_tflops("TPU v5 lite") == 197.0
    assert bench.peak_tflops("TPU v5p") == 459.0
    assert bench.peak_tflops("cpu") is None
    with pytest.raises(SystemExit):
        bench.main(["--parts", "ax"])
