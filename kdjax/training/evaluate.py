"""Evaluation: logits over a split in fixed-size padded batches, then metrics on the host."""

from __future__ import annotations

import numpy as np
from jax.sharding import Mesh

from kdjax.data.dataset import Split
from kdjax.training.batching import take
from kdjax.training.mesh import padded_size, put_batch

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def predict_logits(
    predict, params, split: Split, mesh: Mesh, batch_size: int, trim: bool = True
) -> np.ndarray:
    """float32 logits for every example of `split`, in the split's order. Batches are padded to
    one row count; with `trim`, examples go through in length order, cut to length buckets."""
    arrays = {k: getattr(split, k) for k in MODEL_INPUTS}
    lengths = split.attention_mask.sum(1)
    order = np.argsort(-lengths, kind="stable") if trim else np.arange(len(split))
    size = padded_size(batch_size, mesh)
    out = []
    for start in range(0, len(split), batch_size):
        idx = order[start : start + batch_size]
        logits = predict(params, put_batch(take(arrays, idx, trim), mesh, size))
        out.append(np.asarray(logits)[: len(idx)])
    result = np.empty_like(np.concatenate(out))
    result[order] = np.concatenate(out)
    return result


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def classification_metrics(
    logits: np.ndarray, labels: np.ndarray, teacher_logits: np.ndarray | None = None
) -> dict[str, float]:
    """accuracy, mean cross-entropy loss, and (with a teacher) the student–teacher agreement."""
    pred = logits.argmax(-1)
    logp = _log_softmax(logits)
    out = {
        "accuracy": float((pred == labels).mean()),
        "loss": float(-logp[np.arange(len(labels)), labels].mean()),
    }
    if teacher_logits is not None:
        out["agreement"] = float((pred == teacher_logits.argmax(-1)).mean())
    return out
