"""Evaluation: logits over a split in fixed-size padded batches, then metrics on the host."""

from __future__ import annotations

import numpy as np
from jax.sharding import Mesh

from kdjax.data.dataset import Split
from kdjax.training.mesh import padded_size, put_batch

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def predict_logits(predict, params, split: Split, mesh: Mesh, batch_size: int) -> np.ndarray:
    """float32 logits for every example of `split`, in order. Every batch has the same padded
    shape, so evaluation compiles once."""
    arrays = split.arrays()
    size = padded_size(batch_size, mesh)
    out = []
    for start in range(0, len(split), batch_size):
        chunk = {k: arrays[k][start : start + batch_size] for k in MODEL_INPUTS}
        n = len(chunk["input_ids"])
        logits = predict(params, put_batch(chunk, mesh, size))
        out.append(np.asarray(logits)[:n])
    return np.concatenate(out)


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
