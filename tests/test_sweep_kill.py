"""SIGKILL the driver of a real (tiny) sweep mid-way, rerun it: nothing lost, nothing twice."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "experiments" / "smoke.yaml"


def _done(ledger: Path) -> dict[str, tuple]:
    if not ledger.is_file():
        return {}
    db = sqlite3.connect(ledger, timeout=30)
    try:
        q = "SELECT run_id, kind, finished_at, attempts FROM runs WHERE status='done'"
        return {r[0]: r[1:] for r in db.execute(q)}
    except sqlite3.OperationalError:  # the table is not created yet
        return {}
    finally:
        db.close()


def test_sigkill_mid_sweep_then_rerun_completes_without_rerunning(tmp_path):
    work = tmp_path / "w"
    ledger = work / "ledger.sqlite"
    cmd = [sys.executable, "-m", "kdjax.sweep.cli", "run", str(SMOKE), "--workdir", str(work)]
    cmd.append("-q")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # 1 CPU device: faster
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    try:
        while not any(kind != "teacher" for kind, *_ in _done(ledger).values()):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no distillation run finished in time"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = _done(ledger)  # the truth at the moment of the kill
    assert 2 <= len(before) < 5

    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    db = sqlite3.connect(ledger)
    rows = db.execute("SELECT run_id, kind, status, finished_at, attempts, stage FROM runs")
    rows = {r[0]: r[1:] for r in rows}
    # smoke.yaml, greedy: teacher; default + baseline; the other distance; the other alpha.
    assert len(rows) == 5 and {r[1] for r in rows.values()} == {"done"}
    assert sorted(r[0] for r in rows.values()) == ["baseline", "distill", "distill", "distill",
                                                   "teacher"]  # fmt: skip
    for run_id, (_, finished_at, attempts) in before.items():
        assert rows[run_id][2] == finished_at and rows[run_id][3] == attempts == 1  # not rerun
    assert sum(r[3] for r in rows.values()) <= len(rows) + 1  # only the one in flight ran twice
    for run_id, (kind, *_) in rows.items():
        result = json.loads((work / "runs" / run_id / "result.json").read_text())
        assert result["kind"] == ("finetune" if kind == "teacher" else "distill")
    assert "sentiment" in out.stdout and "tiny" in out.stdout  # the final table
