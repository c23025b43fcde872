"""`kdjax report WORKDIR`: the study's results as Markdown, HTML, figures and tables.

Writes `WORKDIR/report/`: report.md, report.html (self-contained, figures embedded), the PNGs,
effects.csv and recommendation.json (the machine-readable answers), the ledger as runs.csv and
runs.parquet, and the seed-averaged configs.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from kdjax.analysis.gaps import Gaps, find_gaps
from kdjax.analysis.load import load_study, seed_table
from kdjax.analysis.ranks import axis_rankings
from kdjax.analysis.results import Results, analyse
from kdjax.analysis.sections import build


def _ledger_table(ledger: Path) -> tuple[list[str], list[tuple[Any, ...]]]:
    db = sqlite3.connect(ledger, timeout=30)
    try:
        cur = db.execute("SELECT * FROM runs ORDER BY rowid")
        return [d[0] for d in cur.description], cur.fetchall()
    finally:
        db.close()


def _column_type(values: list[Any]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int64"
    if present and all(isinstance(v, int | float) for v in present):
        return "float64"
    return "string"  # includes tau_s, which holds numbers and 'same'


def export_runs(ledger: Path, out: Path) -> list[Path]:
    """The ledger as runs.csv and (when pyarrow is installed) runs.parquet, all columns."""
    names, rows = _ledger_table(ledger)
    written = [out / "runs.csv"]
    with written[0].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(names)
        w.writerows(rows)
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:  # the CSV carries the same data
        return written
    cols = {}
    for i, name in enumerate(names):
        values = [r[i] for r in rows]
        kind = _column_type(values)
        if kind == "string":
            values = [None if v is None else str(v) for v in values]
        elif kind == "float64":
            values = [None if v is None else float(v) for v in values]
        cols[name] = pa.array(values, type=getattr(pa, kind)())
    pq.write_table(pa.table(cols), out / "runs.parquet")
    return [*written, out / "runs.parquet"]


def export_configs(results: Results, path: Path) -> Path:
    """Seed-averaged results per (pair, configuration), with each pair's choice marked."""
    study = results.study
    rows = seed_table(study)
    best = {(p[0], p[1], b.label()) for p in study.pairs if (b := study.best(p)) is not None}
    for row in rows:
        row["pair_best"] = int((row["dataset"], row["student"], row["config"]) in best)
    names = list(rows[0]) if rows else ["dataset", "student", "config"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        w.writerows(rows)
    return path


def analyse_workdir(
    workdir: str | Path,
    default: dict[str, Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    axes: dict[str, list[Any]] | None = None,
) -> tuple[Results, Gaps]:
    """Load a workdir's ledger and compute its answers and gaps (no files written).
    `default`: axis -> option, the default KD configuration (else every axis's first)."""
    study = load_study(workdir, axes=axes)
    if default:
        study.default.update(default)
    results = analyse(study, n_boot=n_boot, seed=seed)
    return results, find_gaps(results)


def write_report(
    workdir: str | Path,
    default: dict[str, Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    axes: dict[str, list[Any]] | None = None,
) -> Path:
    """Write `WORKDIR/report/` from `WORKDIR/ledger.sqlite`; returns that directory.

    `default`: the default KD configuration that the KD gain compares with no KD (axis ->
    option), by default every axis's first option; `axes`: axis -> options, by default the
    workdir's manifest.resolved.yaml or the ledger; `n_boot`, `seed`: the bootstrap over test
    examples (used for corpus-level metrics) and its RNG."""
    workdir = Path(workdir)
    ledger = workdir / "ledger.sqlite"
    results, gaps = analyse_workdir(workdir, default, n_boot, seed, axes)
    rankings = axis_rankings(results)
    out = workdir / "report"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # figures the ledger no longer supports must not linger
        old.unlink()
    try:  # figures are optional: the tables and text do not need matplotlib
        from kdjax.analysis.plots import all_plots
    except ImportError as e:
        gaps.notes.append(f"No figures: matplotlib could not be imported ({e}).")
        figs = {}
    else:
        figs = all_plots(results, out, rankings)
    export_runs(ledger, out)
    export_configs(results, out / "configs.csv")
    results.effects().to_csv(out / "effects.csv", index=False)
    (out / "recommendation.json").write_text(json.dumps(results.recommendation, indent=2) + "\n")
    title = f"Knowledge-distillation study: {workdir.resolve().name}"
    doc = build(results, gaps, figs, rankings, title)
    (out / "report.md").write_text(doc.markdown(root=out))
    (out / "report.html").write_text(doc.html())
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `report` on a `kdjax` sub-command parser."""
    p = subparsers.add_parser("report", help="write WORKDIR/report/ (Markdown, HTML, figures)")
    _arguments(p)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("workdir", help="sweep directory (holds ledger.sqlite)")
    p.add_argument(
        "--default",
        nargs="*",
        default=(),
        metavar="AXIS=VALUE",
        help="the default KD configuration the KD gain uses, e.g. distance=ce alpha=0.5",
    )
    p.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples over test examples"
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed")


def _parse_default(items: list[str]) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--default: expected AXIS=VALUE, got {item!r}")
        key = {"teacher": "teacher_checkpoint"}.get(key, key)
        if key == "tau_squared":
            out[key] = value.lower() in ("on", "true", "1", "yes")
        elif key in ("alpha", "tau_t") or (key == "tau_s" and value != "same"):
            out[key] = float(value)
        else:
            out[key] = value
    return out or None


def cmd_report(args: argparse.Namespace) -> None:
    """Run the `report` sub-command from parsed arguments."""
    out = write_report(args.workdir, _parse_default(list(args.default)), args.bootstrap, args.seed)
    print(f"wrote {out / 'report.md'} and {out / 'report.html'}")


def main(argv: list[str] | None = None) -> int:
    """`kdjax report WORKDIR [--default AXIS=VALUE ...]`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="kdjax report", description=__doc__)
    _arguments(parser)
    args = parser.parse_args(argv)
    try:
        cmd_report(args)
    except (ValueError, FileNotFoundError, sqlite3.DatabaseError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
