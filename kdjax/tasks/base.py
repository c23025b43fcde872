"""What a task family supplies to the one trainer.

A task turns raw columns into row arrays (`encode`), says which distributions the loss sees
(`loss_inputs`, traced inside the jit step) and turns row logits back into example-level
metrics (`evaluate`, on the host). Rows are what the model sees: one per example for
classification and NER, one per context window for extractive QA.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import numpy as np

from kdjax.config import DataConfig

Columns = dict[str, list]

# Every task's arrays hold these model inputs, [rows, seq] int32.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass
class Encoded:
    """One tokenized split.

    arrays: model inputs plus the task's targets, all with a leading row axis (numpy).
    meta: host-side data for decoding predictions to examples (word ids, offsets, gold text...).
    info: counts for the run's result: examples, rows, truncated, dropped_* ...
    """

    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    info: dict[str, int] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.arrays["input_ids"])

    @property
    def seq_len(self) -> int:
        return int(self.arrays["input_ids"].shape[1])


# (logits, labels, mask, class_mask), as kdjax.losses.kd_loss takes them.
LossInputs = tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]


class Task(Protocol):
    name: str
    metric: str  # the validation metric that selects the best epoch; higher is better
    raw_columns: tuple[str, ...]  # the raw column names `encode` expects

    def columns(self, cfg: DataConfig) -> dict[str, str]:
        """Our raw column name -> the source's column name."""

    def labels_of(self, columns: Columns) -> list[str]:
        """Every label string in `columns` (for the default label set and validation)."""

    def encode(
        self, columns: Columns, tokenizer, labels: tuple[str, ...], cfg: DataConfig
    ) -> Encoded:
        """Raw columns -> padded row arrays. Raises ValueError on a label outside `labels`."""

    def loss_inputs(self, logits: jax.Array, batch: dict[str, jax.Array]) -> LossInputs:
        """The distributions the KD objective compares; `batch["weight"]` is 0 on padding rows."""

    def evaluate(
        self,
        logits: np.ndarray,
        enc: Encoded,
        labels: tuple[str, ...],
        teacher_logits: np.ndarray | None = None,
    ) -> dict[str, float]:
        """Metrics from row logits (float32, [rows, ...], padded back to `enc.seq_len`):
        the task metric(s), `loss`, and `agreement` with the teacher when given."""

    def outcomes(self, logits: np.ndarray, enc: Encoded, labels: tuple[str, ...]) -> Outcomes:
        """Per-example test outcomes, in the split's example order: `ids` and `values` (one
        float per example; their mean is the task metric where the metric is a mean)."""


# {"ids": [...], "values": [...], ...}: what a run keeps of each test example (a few kB).
Outcomes = dict[str, list]


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis, keepdims=True))
