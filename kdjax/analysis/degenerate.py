"""Degenerate and equivalent options, found in the ledger rather than assumed.

- a pair whose student never moves: every finished KD run of the pair ends with exactly the
  same test score (and the same per-example outcomes when recorded), as a student stuck on its
  initial or majority-class predictions does; its pair is reported apart and left out of every
  mean, since no option can be told from another there;
- a teacher whose hs and ll checkpoints are the same epoch: distilling from either is one run;
- ce and kl: equal gradients with respect to the student's logits (they differ by the teacher's
  entropy, a constant), so they train identically; their effects are ~0 by construction.
"""

from __future__ import annotations

import numpy as np

from kdjax.analysis.configs import Pair
from kdjax.analysis.load import Study

EQUIVALENT = (("distance", "ce", "kl"),)


def stuck_pairs(study: Study) -> dict[Pair, str]:
    """Pairs whose KD runs all tie exactly, with the reason shown in the report."""
    out = {}
    for pair in study.pairs:
        cells = [x for c, x in study.cells.get(pair, {}).items() if not c.is_baseline]
        runs = [(cell, s) for cell in cells for s in cell.test]
        if len({id(c) for c, _ in runs}) < 2 or not _tie(runs):
            continue
        score = runs[0][0].test[runs[0][1]]
        base = [(x, s) for x in study.baselines.get(pair, {}).values() for s in x.test]
        also = (
            "; so does every no-KD run"
            if base and _tie(runs + base)
            else "; the no-KD baseline differs"
            if base
            else ""
        )
        out[pair] = (
            f"all {len(runs)} finished KD runs ({len(cells)} configurations) have the same test "
            f"score {score * 100:.2f} and outcomes{also}: the student never moves off one "
            "prediction pattern (e.g. its initial or majority-class predictions)"
        )
    return out


def _tie(runs: list) -> bool:
    """Every run has the same test score, and the same per-example outcomes where kept."""
    if len({cell.test[s] for cell, s in runs}) != 1:
        return False
    outs = [cell.outcomes[s] for cell, s in runs if s in cell.outcomes]
    return not any(not np.array_equal(_vec(o), _vec(outs[0])) for o in outs)


def _vec(o: object) -> np.ndarray:
    counts, values = getattr(o, "counts", None), getattr(o, "values", None)
    return np.asarray(counts if counts is not None else values)


def same_teacher_checkpoints(study: Study) -> list[str]:
    """Datasets whose teacher's hs and ll checkpoints are the same epoch."""
    return [d for d, t in study.teachers.items() if t.same_checkpoint]


def equivalence_notes(study: Study) -> list[str]:
    """Known-identical options the study swept, and datasets where hs equals ll."""
    notes = []
    for axis, a, b in EQUIVALENT:
        opts = study.axes.get(axis, [])
        if a in opts and b in opts:
            shared = (study.manifest.get("search") or {}).get("equivalent_distances")
            how = (
                "they were run once and reported under both names"
                if shared == "share"
                else "listing one of them (or `search.equivalent_distances: share`) saves the runs"
            )
            notes.append(
                f"{axis}: {a} and {b} train identically (equal gradients; the losses differ by "
                f"the teacher's entropy, a constant), so their effect is 0 by construction; {how}."
            )
    same = same_teacher_checkpoints(study)
    if same and len(study.axes.get("teacher_checkpoint", [])) > 1:
        notes.append(
            "teacher checkpoint: hs and ll are the same epoch on "
            f"{', '.join(same)}: distilling from either is the same training there."
        )
    return notes
