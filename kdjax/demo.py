"""The embedded demo: a real teacher fine-tuned and a real student distilled, offline on a CPU.

Three runs from `experiments/demo/`: the MiniLM teacher on Rotten Tomatoes, then a 2-layer
student without KD and with KD. A finished run (same resolved config, result present) is
reused, so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from kdjax.config import RunConfig, load_config
from kdjax.training import train

DEMO_DIR = Path(__file__).resolve().parent.parent / "experiments" / "demo"
STAGES = (("teacher", "teacher"), ("student_nokd", "student, no KD"), ("student_kd", "student, KD"))


def _finished(cfg: RunConfig) -> dict | None:
    out = Path(cfg.output_dir)
    result, saved = out / "result.json", out / "config.yaml"
    if result.is_file() and saved.is_file():
        if yaml.safe_load(saved.read_text()) == cfg.model_dump(mode="json"):
            return json.loads(result.read_text())
    return None


def run_demo(workdir: str | Path = "runs/demo", *, fresh: bool = False, configs: Path = DEMO_DIR):
    """Run (or reuse) the three demo runs under `workdir` and return their results by stage."""
    workdir = Path(workdir)
    results, start = {}, time.time()
    cfgs = {}
    for stage, _ in STAGES:
        over = {"output_dir": str(workdir / stage)}
        if stage != "teacher":
            over["teacher"] = str(workdir / "teacher")
        cfgs[stage] = load_config(configs / f"{stage}.yaml", over)  # all validated up front
    for stage, title in STAGES:
        cfg = cfgs[stage]
        done = None if fresh else _finished(cfg)
        if done is not None:
            print(f"== {title}: reusing the finished run in {cfg.output_dir}")
            results[stage] = done
            continue
        print(f"== {title}: training ({cfg.output_dir})")
        results[stage] = train(cfg)
    print()
    print(table(results))
    print(f"\ndemo wall time: {time.time() - start:.0f} s  (outputs in {workdir})")
    return results


def table(results: dict[str, dict]) -> str:
    rows = [("model", "layers", "test accuracy", "validation accuracy", "agreement", "train s")]
    for stage, title in STAGES:
        r = results[stage]
        layers = "6" if stage == "teacher" else "2"
        agree = r["test"].get("agreement")
        rows.append(
            (
                title,
                layers,
                f"{r['test']['accuracy']:.4f}",
                f"{r['validation']['accuracy']:.4f}",
                f"{agree:.4f}" if agree is not None else "-",
                f"{r['train_time_s']:.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    n = results["teacher"]["data"]["examples"]
    lines.append(
        f"(Rotten Tomatoes snippets: {n['train']} train / {n['validation']} validation / "
        f"{n['test']} test examples; agreement = student-teacher argmax agreement on test)"
    )
    return "\n".join(lines)
