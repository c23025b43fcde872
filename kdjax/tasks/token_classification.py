"""Token classification (NER): word-level BIO tags predicted at each word's first sub-token.

Rows are examples. Only the first sub-token of a word carries its label; later sub-tokens,
special tokens and padding hold -100 and are left out of both loss terms and the metrics.
Metrics are computed at word level over every word of the example: a word with no label
position (deleted by the tokenizer, or cut off by truncation) is predicted "O", so gold
entities there count as missed instead of vanishing from the score.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.config import DataConfig
from kdjax.metrics import _get_entities, entity_f1
from kdjax.tasks.base import MODEL_INPUTS, Columns, Encoded, LossInputs, log_softmax
from kdjax.tasks.classification import padded_length

IGNORE = -100
OUTSIDE = "O"
_INFO_KEYS = (
    "examples",
    "rows",
    "dropped_empty",
    "truncated",
    "truncated_words",
    "unaligned_words",
)


def _check(columns: Columns, labels: tuple[str, ...]) -> tuple[list[list[str]], list[list[str]]]:
    """Validated (words, tags) of the non-empty examples; raises on bad tags or lengths."""
    tokens, tags = columns["tokens"], columns["tags"]
    if len(tokens) != len(tags):
        raise ValueError(
            f"data: {len(tokens)} token lists but {len(tags)} tag lists; they must pair up"
        )
    allowed = set(labels)
    words_out, tags_out = [], []
    for i, (words, word_tags) in enumerate(zip(tokens, tags, strict=True)):
        if len(words) != len(word_tags):
            raise ValueError(f"data: example {i} has {len(words)} tokens but {len(word_tags)} tags")
        for tag in word_tags:
            if tag not in allowed:
                raise ValueError(
                    f"data: tag {tag!r} in example {i} is not in the label set {list(labels)}; "
                    "fix the data or set data.labels"
                )
        if len(words) == 0:
            continue
        for word in words:
            if not isinstance(word, str):
                raise ValueError(f"data: example {i} has a non-string token {word!r}")
        words_out.append(list(words))
        tags_out.append(list(word_tags))
    return words_out, tags_out


class TokenClassification:
    """Per-word tags (NER, chunking, POS) scored with CoNLL entity F1."""

    name = "token_classification"
    metric = "f1"
    raw_columns = ("tokens", "tags")

    def columns(self, cfg: DataConfig) -> dict[str, str]:
        """Our raw column name -> the source's column name."""
        return {"tokens": cfg.tokens_column, "tags": cfg.tags_column}

    def labels_of(self, columns: Columns) -> list[str]:
        """Every tag string of every example, flattened."""
        return [tag for tags in columns["tags"] for tag in tags]

    def encode(
        self, columns: Columns, tokenizer, labels: tuple[str, ...], cfg: DataConfig
    ) -> Encoded:
        """Words and tags -> padded rows, the label on each word's first sub-token.

        meta: `gold_tags` (word-level tags per row, full length) and `word_index`
        ([rows, seq] int32: the word a labelled position stands for, -1 elsewhere).
        """
        n_given = len(columns["tokens"])
        # Validate every tag before any tokenizing, so a bad label fails before compute.
        words, gold = _check(columns, labels)
        if not words:
            # Zero rows rather than an error: the caller reports the split with these counts.
            empty = np.zeros((0, 8), np.int32)
            arrays = {k: empty for k in (*MODEL_INPUTS, "labels")}
            meta = {"gold_tags": [], "word_index": empty}
            info = dict.fromkeys(_INFO_KEYS, 0) | {"dropped_empty": n_given}
            return Encoded(arrays, meta, info)
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                "token classification needs a fast tokenizer (it aligns words via word_ids)"
            )
        label_id = {name: i for i, name in enumerate(labels)}

        # Untruncated pass: the padded length, and which words have any sub-token at all, so a
        # word the tokenizer deletes is not mistaken for one lost to truncation.
        full = tokenizer(words, is_split_into_words=True, truncation=False)
        length = padded_length([len(ids) for ids in full["input_ids"]], cfg.max_length)
        enc = tokenizer(
            words,
            is_split_into_words=True,
            truncation=True,
            max_length=length,
            padding="max_length",
            return_tensors="np",
            return_token_type_ids=True,
        )
        arrays = {k: enc[k].astype(np.int32) for k in MODEL_INPUTS}
        rows = len(words)
        label_arr = np.full((rows, length), IGNORE, np.int32)  # [rows, seq]
        word_index = np.full((rows, length), -1, np.int32)  # [rows, seq]
        truncated = unaligned = truncated_words = 0
        for r in range(rows):
            present = {w for w in full.word_ids(r) if w is not None}
            unaligned += len(words[r]) - len(present)
            seen: set[int] = set()
            for pos, w in enumerate(enc.word_ids(r)):
                if w is None or w in seen:
                    continue
                seen.add(w)
                label_arr[r, pos] = label_id[gold[r][w]]
                word_index[r, pos] = w
            lost = len(present - seen)
            truncated_words += lost
            truncated += lost > 0
        arrays["labels"] = label_arr
        return Encoded(
            arrays=arrays,
            meta={"gold_tags": gold, "word_index": word_index},
            info={
                "examples": rows,
                "rows": rows,
                "dropped_empty": n_given - rows,
                "truncated": truncated,
                "truncated_words": truncated_words,
                "unaligned_words": unaligned,
            },
        )

    def loss_inputs(self, logits: jax.Array, batch: dict[str, jax.Array]) -> LossInputs:
        """logits [batch, seq, labels]; KD and CE over labelled positions of real rows only."""
        labels = batch["labels"]  # [batch, seq]
        mask = batch["weight"][:, None].astype(jnp.float32) * (labels >= 0).astype(jnp.float32)
        return logits, labels, mask, None

    def predict_words(
        self, logits: np.ndarray, enc: Encoded, labels: tuple[str, ...]
    ) -> list[list[str]]:
        """Predicted tags per example, one per word; words without a label position get "O"."""
        _check_logits(logits, enc, labels)
        pred = np.asarray(logits).argmax(-1)  # [rows, seq]
        word_index = enc.meta["word_index"]  # [rows, seq]
        out = [[OUTSIDE] * len(tags) for tags in enc.meta["gold_tags"]]
        for r, pos in zip(*np.nonzero(word_index >= 0), strict=True):
            out[r][word_index[r, pos]] = labels[pred[r, pos]]
        return out

    def evaluate(
        self,
        logits: np.ndarray,
        enc: Encoded,
        labels: tuple[str, ...],
        teacher_logits: np.ndarray | None = None,
    ) -> dict[str, float]:
        """Entity f1/precision/recall (word level), token accuracy, loss and agreement."""
        scores = entity_f1(enc.meta["gold_tags"], self.predict_words(logits, enc, labels))
        gold = enc.arrays["labels"]  # [rows, seq]
        valid = gold >= 0
        n = int(valid.sum())
        pred = np.asarray(logits).argmax(-1)  # [rows, seq]
        logp = log_softmax(np.asarray(logits))  # [rows, seq, labels] float64
        nll = -np.take_along_axis(logp, np.where(valid, gold, 0)[..., None], axis=-1)[..., 0]
        out = {
            "f1": float(scores["f1"]),
            "precision": float(scores["precision"]),
            "recall": float(scores["recall"]),
            # An encoding without labelled positions scores 0 rather than NaN.
            "accuracy": float((pred == gold)[valid].mean()) if n else 0.0,
            "loss": float(nll[valid].mean()) if n else 0.0,
        }
        if teacher_logits is not None:
            _check_logits(teacher_logits, enc, labels)
            agree = pred == np.asarray(teacher_logits).argmax(-1)
            out["agreement"] = float(agree[valid].mean()) if n else 0.0
        return out

    def outcomes(self, logits, enc: Encoded, labels) -> dict[str, list]:
        """Per sentence: `counts` [tp, predicted, gold] entities (the entity F1 is not a mean
        over sentences; it is 2·Σtp / (Σpredicted + Σgold)) and `values`, 1 where the sentence's
        entities are all exactly right."""
        counts = sentence_counts(enc.meta["gold_tags"], self.predict_words(logits, enc, labels))
        values = [int(tp == p == g) for tp, p, g in counts]
        return {"ids": list(range(len(counts))), "values": values, "counts": counts}


def sentence_counts(gold: list[list[str]], pred: list[list[str]]) -> list[list[int]]:
    """[true positives, predicted entities, gold entities] per sentence (typed spans, as
    `entity_f1` counts them): the corpus F1 is 2·Σtp / (Σpred + Σgold)."""
    out = []
    for g, p in zip(gold, pred, strict=True):
        true, found = set(_get_entities(list(g))), set(_get_entities(list(p)))
        out.append([len(true & found), len(found), len(true)])
    return out


def _check_logits(logits: np.ndarray, enc: Encoded, labels: tuple[str, ...]) -> None:
    want = (len(enc), enc.seq_len, len(labels))
    if tuple(np.shape(logits)) != want:
        raise ValueError(
            f"logits: expected shape {want} [rows, seq, labels], got {np.shape(logits)}"
        )
