"""Evaluation: logits over a split in padded batches; the task turns them into metrics."""

from __future__ import annotations

import numpy as np
from jax.sharding import Mesh

from kdjax.distributed import to_host
from kdjax.tasks import MODEL_INPUTS, Encoded
from kdjax.training.batching import take
from kdjax.training.mesh import padded_size, put_batch


def predict_logits(
    predict, params, split: Encoded, mesh: Mesh, batch_size: int, trim: bool = True
) -> np.ndarray:
    """float32 logits for every row of `split`, in order. Batches are padded to one row count;
    with `trim`, rows go through in length order, cut to length buckets, and per-token logits
    are padded back to the split's sequence length (with zeros) before they are returned."""
    arrays = {k: split.arrays[k] for k in MODEL_INPUTS}
    lengths = arrays["attention_mask"].sum(1)
    order = np.argsort(-lengths, kind="stable") if trim else np.arange(len(split))
    size = padded_size(batch_size, mesh)
    out = []

    def fetch(logits, rows: int) -> None:
        logits = to_host(logits)[:rows]
        if logits.ndim == 3 and logits.shape[1] < split.seq_len:  # [rows, seq, labels]
            pad = split.seq_len - logits.shape[1]
            logits = np.pad(logits, ((0, 0), (0, pad), (0, 0)))
        out.append(logits)

    pending = None  # one batch in flight: the next is dispatched before this one is fetched
    for start in range(0, len(split), batch_size):
        idx = order[start : start + batch_size]
        logits = predict(params, put_batch(take(arrays, idx, trim), mesh, size))
        if pending is not None:
            fetch(*pending)
        pending = (logits, len(idx))
    if pending is not None:
        fetch(*pending)
    stacked = np.concatenate(out)
    result = np.empty_like(stacked)
    result[order] = stacked
    return result
