"""Short text summaries of a ledger: counts, failures, and the best configuration per pair."""

from __future__ import annotations

from collections import defaultdict
from statistics import mean
from typing import Any

from kdjax.sweep.ledger import Ledger

KD_KEY = ("teacher_checkpoint", "distance", "alpha", "tau_t", "tau_s", "tau_squared")


def config_label(row: dict[str, Any]) -> str:
    if row["kind"] == "baseline":
        return "no KD"
    t2 = " tau^2" if row["tau_squared"] else ""
    return (
        f"{row['teacher_checkpoint']} {row['distance']} alpha={row['alpha']:g} "
        f"tau_t={row['tau_t']:g} tau_s={_g(row['tau_s'])}{t2}"
    )


def _g(v: Any) -> str:
    return f"{v:g}" if isinstance(v, int | float) else str(v)


def best_per_pair(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (dataset, student): the baseline and the validation-best KD configuration, each
    with validation and test metrics averaged over its finished seeds."""
    groups: dict[tuple, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["status"] == "done" and r["kind"] in ("distill", "baseline"):
            key = ("baseline",) if r["kind"] == "baseline" else tuple(r[k] for k in KD_KEY)
            groups[(r["dataset"], r["student"])][key].append(r)
    out = {}
    for pair, configs in groups.items():

        def stats(runs: list[dict]) -> dict[str, Any]:
            return {
                "label": config_label(runs[0]),
                "val": mean(r["val_metric"] for r in runs),
                "test": mean(r["test_metric"] for r in runs),
                "seeds": len(runs),
                "metric": runs[0]["metric_name"],
            }

        kd = {k: stats(v) for k, v in configs.items() if k != ("baseline",)}
        best = max(kd.values(), key=lambda s: s["val"]) if kd else None
        base = stats(configs[("baseline",)]) if ("baseline",) in configs else None
        out[pair] = {"baseline": base, "best": best, "configs": len(kd)}
    return out


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pair_table(rows: list[dict[str, Any]]) -> str:
    """Per pair: no-KD baseline, best KD configuration (validation-chosen), their metrics."""
    best = best_per_pair(rows)
    if not best:
        return "(no finished distillation runs yet)"
    out = [["dataset", "student", "metric", "no-KD val", "no-KD test", "best KD config", "val",
            "test", "configs"]]  # fmt: skip
    for (dataset, student), b in sorted(best.items()):
        base, kd = b["baseline"], b["best"]
        metric = (kd or base)["metric"]
        out.append(
            [
                dataset,
                student,
                metric,
                f"{base['val']:.4f}" if base else "-",
                f"{base['test']:.4f}" if base else "-",
                kd["label"] if kd else "-",
                f"{kd['val']:.4f}" if kd else "-",
                f"{kd['test']:.4f}" if kd else "-",
                str(b["configs"]),
            ]
        )
    return table(out)


def status_text(ledger: Ledger, failures: int = 20) -> str:
    """Counts per kind and status, the failed runs' first error lines, the best per pair."""
    counts = ledger.counts()
    statuses = ("pending", "running", "done", "failed")
    kinds = ("teacher", "distill", "baseline")
    rows = [["kind", *statuses, "total"]]
    for k in kinds:
        n = [counts.get((k, s), 0) for s in statuses]
        rows.append([k, *map(str, n), str(sum(n))])
    n = [sum(counts.get((k, s), 0) for k in kinds) for s in statuses]
    rows.append(["all", *map(str, n), str(sum(n))])
    parts = [table(rows)]
    failed = ledger.rows(status="failed")
    if failed:
        parts.append(f"\nfailed runs ({len(failed)}):")
        for r in failed[:failures]:
            first = (r["error"] or "").strip().split("\n", 1)[0]
            who = f"{r['dataset']}/{r['student']}" if r["student"] else r["dataset"]
            parts.append(f"  {r['run_id']}  {r['kind']:<8}  {who}  {first}")
        if len(failed) > failures:
            parts.append(f"  ... and {len(failed) - failures} more")
    parts.append("\n" + pair_table(ledger.rows()))
    return "\n".join(parts)
