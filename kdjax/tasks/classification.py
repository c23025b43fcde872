"""Sequence classification: single texts (sentiment, topic) and text pairs (NLI), one label each."""

from __future__ import annotations

import numpy as np

from kdjax.config import DataConfig
from kdjax.tasks.base import MODEL_INPUTS, Columns, Encoded, LossInputs, log_softmax


def label_ids(names: list[str], label_set: tuple[str, ...], what: str = "label") -> np.ndarray:
    """Label strings -> ids; a name outside the label set is an error naming its row."""
    index = {name: i for i, name in enumerate(label_set)}
    out = np.empty(len(names), dtype=np.int32)
    for row, name in enumerate(names):
        if name not in index:
            raise ValueError(
                f"data: {what} {name!r} (row {row}) is not in the label set {list(label_set)}; "
                "fix the data or set data.labels"
            )
        out[row] = index[name]
    return out


def padded_length(lengths, max_length: int) -> int:
    """The longest example rounded up to a multiple of 8, capped at max_length."""
    return min(max_length, -(-max(lengths) // 8) * 8)


class Classification:
    name = "classification"
    metric = "accuracy"
    raw_columns = ("text", "text_pair", "label")

    def columns(self, cfg: DataConfig) -> dict[str, str]:
        cols = {"text": cfg.text_column, "label": cfg.label_column}
        if cfg.text_pair_column:
            cols["text_pair"] = cfg.text_pair_column
        return cols

    def labels_of(self, columns: Columns) -> list[str]:
        return [str(v) for v in columns["label"]]

    def encode(self, columns: Columns, tokenizer, labels, cfg: DataConfig) -> Encoded:
        texts = [k for k in ("text", "text_pair") if k in columns]
        keep = [
            i
            for i in range(len(columns["label"]))
            if all(isinstance(columns[k][i], str) and columns[k][i].strip() for k in texts)
        ]
        dropped = len(columns["label"]) - len(keep)
        columns = {k: [v[i] for i in keep] for k, v in columns.items()}
        ids = label_ids(self.labels_of(columns), labels)
        pair = columns.get("text_pair")
        full = tokenizer(columns["text"], pair, truncation=False)["input_ids"]
        length = padded_length([len(x) for x in full], cfg.max_length)
        enc = tokenizer(
            columns["text"],
            pair,
            truncation="longest_first",
            max_length=length,
            padding="max_length",
            return_tensors="np",
            return_token_type_ids=True,
        )
        arrays = {k: enc[k].astype(np.int32) for k in MODEL_INPUTS}
        arrays["labels"] = ids
        info = {
            "examples": len(ids),
            "rows": len(ids),
            "truncated": sum(len(x) > length for x in full),
            "dropped_empty": dropped,
        }
        return Encoded(arrays, {}, info)

    def loss_inputs(self, logits, batch) -> LossInputs:
        return logits, batch["labels"], batch["weight"], None

    def evaluate(self, logits, enc: Encoded, labels, teacher_logits=None) -> dict[str, float]:
        gold = enc.arrays["labels"]
        pred = logits.argmax(-1)
        out = {
            "accuracy": float((pred == gold).mean()),
            "loss": float(-log_softmax(logits)[np.arange(len(gold)), gold].mean()),
        }
        if teacher_logits is not None:
            out["agreement"] = float((pred == teacher_logits.argmax(-1)).mean())
        return out

    def outcomes(self, logits, enc: Encoded, labels) -> dict[str, list]:
        """1 where the example's prediction is right, else 0; the mean is the accuracy."""
        right = logits.argmax(-1) == enc.arrays["labels"]
        return {"ids": list(range(len(right))), "values": right.astype(int).tolist()}
