"""`kdjax check MANIFEST`: a preflight of every dataset, teacher and student before renting chips.

With the network it fetches only metadata and first rows (the hub API, `datasets` streaming,
config and vocabulary files); offline it checks what is on this machine (files, wheels, the hub
cache) and says plainly what it could not verify. One line per item; no traceback.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse

OK, FAIL, UNVERIFIED = "OK", "FAIL", "UNVERIFIED"


@dataclass
class Result:
    kind: str  # dataset | teacher | student | tokenizers | manifest
    name: str
    status: str  # OK | FAIL | UNVERIFIED
    detail: str

    def line(self) -> str:
        return f"{self.status:<10} {self.kind} {self.name}: {self.detail}"


def network() -> tuple[bool, str]:
    """(online, why not): HF_HUB_OFFLINE, or whether the hub endpoint answers a TCP connect."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False, "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=3).close()
    except OSError as e:
        return False, f"no network ({url.hostname}: {e.__class__.__name__})"
    return True, ""


def mb(n: int | None) -> str:
    if n is None:
        return "size unknown"
    return "<1 MB" if n < 1e6 else f"{n / 1e6:,.0f} MB"


def check_manifest(path: str, online: bool | None = None) -> list[Result]:
    """Every item of a study manifest, checked; `online` None probes the network."""
    from kdjax.check.datasets import check_dataset
    from kdjax.check.models import check_model, check_tokenizers
    from kdjax.sweep.manifest import load_manifest

    try:
        m = load_manifest(path)
    except Exception as e:  # a manifest that does not load is itself the finding
        return [Result("manifest", str(path), FAIL, str(e).replace("\n", "; "))]
    why = ""
    if online is None:
        online, why = network()
    elif not online:
        why = "offline"
    results: list[Result] = []
    for ds in m.resolved_datasets():
        results.append(check_dataset(ds, online, why))
    vocabs: dict[str, object] = {}
    res, vocabs["teacher"] = check_model("teacher", "teacher", m.teacher_model(), online, why)
    results.append(res)
    for s in m.resolved_students():
        res, vocabs[f"student {s.name}"] = check_model("student", s.name, s.model, online, why)
        results.append(res)
    results.append(check_tokenizers(vocabs))
    return results


def exit_code(results: list[Result]) -> int:
    """0: all OK; 1: something would fail; 3: nothing fails, but something was not verified."""
    statuses = {r.status for r in results}
    if FAIL in statuses:
        return 1
    return 3 if UNVERIFIED in statuses else 0


def run_check(path: str) -> int:
    """`kdjax check`: print one line per item and a summary; return the exit code."""
    results = check_manifest(path)
    for r in results:
        print(r.line(), flush=True)
    counts = {s: sum(r.status == s for r in results) for s in (OK, FAIL, UNVERIFIED)}
    code = exit_code(results)
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    verdict = {0: "ready", 1: "fix the FAIL lines first", 3: "not fully verified"}[code]
    print(f"check {path}: {summary} -> {verdict}")
    return code
