"""Per-run diagnostics beyond the task metric, over the distributions the KD objective compares:
student–teacher agreement, KL(p_t ‖ p_s) at temperature 1, and expected calibration error."""

from __future__ import annotations

import numpy as np

from kdjax.tasks import Encoded, Task

ECE_BINS = 15


def _masked_log_softmax(z: np.ndarray, class_mask: np.ndarray | None) -> np.ndarray:
    z = z.astype(np.float64)
    if class_mask is not None:
        z = np.where(class_mask, z, -np.inf)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def expected_calibration_error(probs: np.ndarray, gold: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE with equal-width confidence bins: sum_b |B|/n * |accuracy(B) - confidence(B)|."""
    if len(gold) == 0:
        return 0.0
    conf, pred = probs.max(-1), probs.argmax(-1)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs((pred[sel] == gold[sel]).mean() - conf[sel].mean())
    return float(ece)


def diagnostics(
    task: Task, student: np.ndarray, teacher: np.ndarray | None, enc: Encoded
) -> dict[str, float]:
    """`ece` of the student (on labelled distributions); with a teacher also `kl_t1` (mean
    KL(p_t ‖ p_s) at T=1) and `agreement_dist` (argmax agreement per distribution)."""
    batch = {**enc.arrays, "weight": np.ones(len(enc), np.float32)}
    z_s, labels, mask, class_mask = (
        None if x is None else np.asarray(x) for x in task.loss_inputs(student, batch)
    )
    keep = np.asarray(mask) > 0
    if class_mask is not None:
        class_mask = np.broadcast_to(class_mask, z_s.shape)[keep]
    logp_s = _masked_log_softmax(z_s[keep], class_mask)
    gold = np.asarray(labels)[keep]
    labelled = gold >= 0
    out = {"ece": expected_calibration_error(np.exp(logp_s[labelled]), gold[labelled])}
    if teacher is not None:
        z_t = np.asarray(task.loss_inputs(teacher, batch)[0])[keep]
        logp_t = _masked_log_softmax(z_t, class_mask)
        p_t = np.exp(logp_t)
        with np.errstate(invalid="ignore"):  # masked classes: -inf - -inf, dropped by where
            terms = np.where(p_t > 0, p_t * (logp_t - logp_s), 0.0)
        out["kl_t1"] = float(terms.sum(-1).mean()) if len(terms) else 0.0
        out["agreement_dist"] = float((logp_s.argmax(-1) == logp_t.argmax(-1)).mean())
    return out
