"""Degenerate and equivalent options, found in the ledger rather than assumed.

- a pair whose student never moves: every finished run of the pair (KD and no KD) ends with
  exactly the same test score (and the same per-example outcomes when recorded), as a student
  stuck on its initial or majority-class predictions does; its pair is reported apart and left
  out of every mean, since no option can be told from another there;
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
    """Pairs whose runs all tie exactly, with the reason shown in the report."""
    out = {}
    for pair in study.pairs:
        cells = list(study.cells.get(pair, {}).values())
        for by_lr in study.baselines.get(pair, {}).values():
            cells.append(by_lr)
        runs = [(cell, s) for cell in cells for s in cell.test]
        if len({id(c) for c, _ in runs}) < 2:
            continue
        scores = {cell.test[s] for cell, s in runs}
        if len(scores) != 1:
            continue
        outs = [cell.outcomes[s] for cell, s in runs if s in cell.outcomes]
        if outs and any(not np.array_equal(_vec(o), _vec(outs[0])) for o in outs):
            continue
        n = len({id(c) for c, _ in runs})
        out[pair] = (
            f"all {len(runs)} finished runs ({n} configurations, no KD included) have the same "
            f"test score {next(iter(scores)) * 100:.2f}: the student never moves off one "
            "prediction pattern (e.g. its initial or majority-class predictions)"
        )
    return out


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
