"""The ledger: one SQLite row per run, the source of truth for what is done.

Only the driver writes, and every status change is one transaction, so a driver killed at any
point leaves each run either finished (its result recorded) or not; `reset_running` on the next
start turns runs that were in flight back to pending.
"""

from __future__ import annotations

import csv
import json
import socket
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kdjax.sweep.plan import Run

COLUMNS = (
    ("run_id", "TEXT PRIMARY KEY"),
    ("kind", "TEXT NOT NULL"),  # teacher | distill | baseline
    ("status", "TEXT NOT NULL"),  # pending | running | done | failed
    ("config_json", "TEXT NOT NULL"),
    ("dataset", "TEXT"),
    ("task", "TEXT"),
    ("student", "TEXT"),
    ("teacher_checkpoint", "TEXT"),
    ("distance", "TEXT"),
    ("alpha", "REAL"),
    ("tau_t", "REAL"),
    ("tau_s", ""),  # a number or 'same': no type affinity keeps both as given
    ("tau_squared", "INTEGER"),
    ("seed", "INTEGER"),
    ("stage", "TEXT"),
    ("val_metric", "REAL"),
    ("test_metric", "REAL"),
    ("metric_name", "TEXT"),
    ("val_json", "TEXT"),
    ("test_json", "TEXT"),
    ("diagnostics_json", "TEXT"),
    ("result_json", "TEXT"),
    ("error", "TEXT"),
    ("attempts", "INTEGER NOT NULL DEFAULT 0"),
    ("started_at", "REAL"),
    ("finished_at", "REAL"),
    ("wall_time_s", "REAL"),
    ("versions_json", "TEXT"),
    ("host", "TEXT"),
)
NAMES = tuple(c for c, _ in COLUMNS)
# Result keys kept as diagnostics next to the metrics (the full result is in result_json).
DIAGNOSTICS = ("best_epoch", "steps", "train_time_s", "devices", "data", "history",
               "diagnostics", "checkpoints")  # fmt: skip


class Ledger:
    """`WORKDIR/ledger.sqlite`: table `runs`, WAL mode."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a `done` row survives a power cut
        cols = ", ".join(f"{c} {t}".strip() for c, t in COLUMNS)
        self.db.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
        self.db.execute("CREATE INDEX IF NOT EXISTS runs_pair ON runs (dataset, student)")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, sql: str, args: Iterable[Any] = ()) -> int:
        with self.db:  # one transaction
            self.db.execute("BEGIN IMMEDIATE")
            return self.db.execute(sql, tuple(args)).rowcount

    def upsert_pending(self, runs: Iterable[Run]) -> int:
        """Add runs not yet in the ledger as pending; existing rows are left as they are.
        Returns how many were added."""
        rows = []
        for r in runs:
            cols = {"run_id": r.run_id, "status": "pending", **r.columns()}
            cols["config_json"] = r.config.model_dump_json()
            rows.append(cols)
        if not rows:
            return 0
        names = list(rows[0])
        sql = (
            f"INSERT OR IGNORE INTO runs ({', '.join(names)}) "
            f"VALUES ({', '.join('?' for _ in names)})"
        )
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            before = self.db.total_changes
            self.db.executemany(sql, [tuple(r[n] for n in names) for r in rows])
            return self.db.total_changes - before

    def mark_running(self, run_id: str) -> None:
        self._write(
            "UPDATE runs SET status='running', attempts=attempts+1, started_at=?, "
            "finished_at=NULL, error=NULL WHERE run_id=?",
            (time.time(), run_id),
        )

    def mark_done(self, run_id: str, result: dict[str, Any], extra_attempts: int = 0) -> None:
        """Record a finished run's result; the run is done only once this commits."""
        metric = result.get("metric")
        val, test = result.get("validation") or {}, result.get("test") or {}
        diagnostics = {k: result[k] for k in DIAGNOSTICS if k in result}
        self._write(
            "UPDATE runs SET status='done', val_metric=?, test_metric=?, metric_name=?, "
            "val_json=?, test_json=?, diagnostics_json=?, result_json=?, error=NULL, "
            "attempts=attempts+?, finished_at=?, wall_time_s=?, versions_json=?, host=? "
            "WHERE run_id=?",
            (
                val.get(metric),
                test.get(metric),
                metric,
                json.dumps(val),
                json.dumps(test),
                json.dumps(diagnostics),
                json.dumps(result),
                extra_attempts,
                time.time(),
                result.get("wall_time_s"),
                json.dumps(result.get("versions")),
                result.get("host") or socket.gethostname(),
                run_id,
            ),
        )

    def mark_failed(self, run_id: str, error: str, extra_attempts: int = 0) -> None:
        self._write(
            "UPDATE runs SET status='failed', error=?, attempts=attempts+?, finished_at=? "
            "WHERE run_id=?",
            (error, extra_attempts, time.time(), run_id),
        )

    def reset_running(self) -> int:
        """Runs left `running` by a driver that died go back to pending; returns how many."""
        return self._write("UPDATE runs SET status='pending' WHERE status='running'")

    def get(self, run_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM runs WHERE run_id=?", (run_id,)).fetchone()
        return dict(row) if row else None

    def fetch(self, run_ids: Iterable[str], *columns: str) -> dict[str, dict[str, Any]]:
        """Selected columns of the given runs, by run id (runs not in the ledger are absent)."""
        bad = [c for c in columns if c not in NAMES]
        if bad:
            raise ValueError(f"fetch: unknown columns {bad}; allowed: {', '.join(NAMES)}")
        ids, out = list(run_ids), {}
        cols = ", ".join(("run_id", *columns))
        for i in range(0, len(ids), 500):  # SQLite caps the number of bound parameters
            chunk = ids[i : i + 500]
            marks = ",".join("?" * len(chunk))
            q = f"SELECT {cols} FROM runs WHERE run_id IN ({marks}) ORDER BY rowid"
            out.update({r["run_id"]: dict(r) for r in self.db.execute(q, chunk)})
        return out

    def status_of(self, run_ids: Iterable[str]) -> dict[str, str]:
        return {k: v["status"] for k, v in self.fetch(run_ids, "status").items()}

    def rows(self, **filters: Any) -> list[dict[str, Any]]:
        """Rows whose columns equal the given values (a list or tuple value means any of)."""
        where, args = [], []
        for k, v in filters.items():
            if k not in NAMES:
                raise ValueError(f"rows: unknown column {k!r}; allowed: {', '.join(NAMES)}")
            if isinstance(v, list | tuple | set):
                where.append(f"{k} IN ({','.join('?' * len(v))})")
                args += list(v)
            elif v is None:
                where.append(f"{k} IS NULL")
            else:
                where.append(f"{k}=?")
                args.append(v)
        sql = "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "")
        return [dict(r) for r in self.db.execute(sql + " ORDER BY rowid", args)]

    def counts(self) -> dict[tuple[str, str], int]:
        q = "SELECT kind, status, COUNT(*) FROM runs GROUP BY kind, status"
        return {(k, s): n for k, s, n in self.db.execute(q)}

    def export_csv(self, path: str | Path) -> Path:
        """All rows as CSV (config and result JSON included as text)."""
        path = Path(path)
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(NAMES)
            for row in self.db.execute("SELECT * FROM runs ORDER BY rowid"):
                w.writerow(list(row))
        return path
