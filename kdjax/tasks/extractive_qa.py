"""Extractive question answering (SQuAD, MRQA): predict the answer span's start and end tokens.

A context longer than the window is split into overlapping windows (`data.doc_stride` tokens of
overlap); each window is one row. A window that does not hold the whole answer is trained to
point at CLS (position 0), as in transformers' run_qa. Decoding takes the best valid span over
all windows of an example and maps it back to characters of the context.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kdjax.config import DataConfig
from kdjax.metrics import squad_em_f1
from kdjax.tasks.base import MODEL_INPUTS, Columns, Encoded, LossInputs, log_softmax

# Rows scored at once in decoding: bounds the [rows, n_best, n_best] score block.
_DECODE_CHUNK = 1024


def _answers(value: Any, fmt: str, row: int) -> list[tuple[str, int, int]]:
    """One example's answers as (text, char start, char end exclusive), in source order."""
    if not isinstance(value, dict):
        hint = (
            "; for MRQA set data.answers_column: detected_answers"
            if fmt == "mrqa" and isinstance(value, list)
            else ""
        )
        raise ValueError(
            f"data: answers of row {row} must be a mapping for data.answers_format {fmt!r}, "
            f"got {type(value).__name__}{hint}"
        )
    if fmt == "squad":
        if not {"text", "answer_start"} <= value.keys():
            raise ValueError(
                f"data: answers of row {row} need 'text' and 'answer_start' (SQuAD layout), "
                f"got keys {sorted(value)}"
            )
        return [
            (str(t), int(s), int(s) + len(str(t)))
            for t, s in zip(value["text"], value["answer_start"], strict=True)
        ]
    if not {"text", "char_spans"} <= value.keys():
        raise ValueError(
            f"data: answers of row {row} need 'text' and 'char_spans' (MRQA detected_answers), "
            f"got keys {sorted(value)}"
        )
    out = []
    for text, spans in zip(value["text"], value["char_spans"], strict=True):
        # MRQA span ends are inclusive; an answer may be detected several times: take the first.
        start, end = (spans["start"][0], spans["end"][0]) if spans["start"] else (-1, -2)
        out.append((str(text), int(start), int(end) + 1))
    return out


def _nearest(context: str, text: str, near: int) -> int:
    """Char start of the occurrence of `text` nearest to `near`; -1 when there is none."""
    best, pos = -1, context.find(text)
    while pos >= 0:
        if best < 0 or abs(pos - near) < abs(best - near):
            best = pos
        pos = context.find(text, pos + 1)
    return best


def _target(context: str, answer: tuple[str, int, int], fmt: str) -> tuple[int, int, bool]:
    """The training span (char start, end exclusive, relocated?); start -1 when not found."""
    text, start, end = answer
    in_bounds = 0 <= start < end <= len(context)
    # An MRQA span is given by both ends, so it is the target even where its detected text
    # differs from the context (e.g. in case); a SQuAD start must carry the text itself.
    if in_bounds and (fmt == "mrqa" or context[start:end] == text):
        return start, end, False
    found = _nearest(context, text, start) if text else -1
    return (found, found + len(text), True) if found >= 0 else (-1, -1, False)


def _window_labels(
    ctx: np.ndarray, offsets: np.ndarray, start_char: int, end_char: int
) -> tuple[int, int]:
    """(start, end) token of the answer in one window, or (0, 0) (CLS) when not wholly inside.

    ctx: [seq] bool context tokens; offsets: [seq, 2] char offsets.
    """
    idx = np.flatnonzero(ctx)
    if not (offsets[idx[0], 0] <= start_char and offsets[idx[-1], 1] >= end_char):
        return 0, 0
    # The last token starting at or before the answer, the first one ending at or after it:
    # an answer starting or ending inside a word still gets the whole word.
    start = idx[offsets[idx, 0] <= start_char][-1]
    end = idx[offsets[idx, 1] >= end_char][0]
    return int(start), int(end)


def _best_spans(
    start_logits: np.ndarray, end_logits: np.ndarray, valid: np.ndarray, n_best: int, max_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row the best valid span: (score, start, end), score -inf where no span is valid.

    start_logits, end_logits, valid: [rows, seq]. Candidates are each row's top `n_best` start
    and end positions among the valid ones.
    """
    rows, seq = valid.shape
    k = min(n_best, seq)
    s = np.where(valid, start_logits, -np.inf).astype(np.float64)
    e = np.where(valid, end_logits, -np.inf).astype(np.float64)
    top_s = np.argsort(-s, axis=1, kind="stable")[:, :k]  # [rows, k]
    top_e = np.argsort(-e, axis=1, kind="stable")[:, :k]
    ts, te = top_s[:, :, None], top_e[:, None, :]  # [rows, k, 1], [rows, 1, k]
    ok = (
        np.take_along_axis(valid, top_s, 1)[:, :, None]
        & np.take_along_axis(valid, top_e, 1)[:, None, :]
        & (te >= ts)
        & (te - ts + 1 <= max_len)
    )  # [rows, k, k]
    score = np.take_along_axis(s, top_s, 1)[:, :, None] + np.take_along_axis(e, top_e, 1)[:, None]
    score = np.where(ok, score, -np.inf).reshape(rows, k * k)
    flat = score.argmax(1)
    r = np.arange(rows)
    return score[r, flat], top_s[r, flat // k], top_e[r, flat % k]


class ExtractiveQA:
    name = "extractive_qa"
    metric = "f1"
    raw_columns = ("id", "question", "context", "answers")

    def columns(self, cfg: DataConfig) -> dict[str, str]:
        return {
            "id": cfg.id_column,
            "question": cfg.question_column,
            "context": cfg.context_column,
            "answers": cfg.answers_column,
        }

    def labels_of(self, columns: Columns) -> list[str]:
        # No label set: the model's two outputs are the start and end logits.
        return []

    def encode(
        self, columns: Columns, tokenizer, labels: tuple[str, ...], cfg: DataConfig
    ) -> Encoded:
        """Questions + contexts -> one row per context window, with start/end token labels."""
        info = {
            "examples": 0,
            "rows": 0,
            "windows_with_answer": 0,
            "dropped_empty": 0,
            "dropped_no_answer": 0,
            "dropped_answer_mismatch": 0,
            "answers_relocated": 0,
        }
        ids, questions, contexts, golds, targets = [], [], [], [], []
        for i, (qid, question, context, value) in enumerate(
            zip(
                columns["id"],
                columns["question"],
                columns["context"],
                columns["answers"],
                strict=True,
            )
        ):
            if not (isinstance(question, str) and question.strip()) or not (
                isinstance(context, str) and context.strip()
            ):
                info["dropped_empty"] += 1
                continue
            answers = _answers(value, cfg.answers_format, i)
            if not answers or not answers[0][0]:
                # Nothing to train on or to score against (e.g. SQuAD v2's unanswerable).
                info["dropped_no_answer"] += 1
                continue
            start, end, relocated = _target(context, answers[0], cfg.answers_format)
            if start < 0:
                info["dropped_answer_mismatch"] += 1
                continue
            info["answers_relocated"] += relocated
            ids.append(str(qid))
            # Leading spaces in a question only waste window room (run_qa strips them too).
            questions.append(question.lstrip())
            contexts.append(context)
            golds.append([a[0] for a in answers])
            targets.append((start, end))
        if not ids:
            raise ValueError(f"data: no extractive QA examples left to encode ({info})")

        self._check_stride(questions, tokenizer, cfg)
        enc = tokenizer(
            questions,
            contexts,
            truncation="only_second",
            max_length=cfg.max_length,
            stride=cfg.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding="max_length",
            return_token_type_ids=True,
            return_tensors="np",
        )
        example_index = np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int32)  # [rows]
        offsets = np.asarray(enc["offset_mapping"], dtype=np.int32)  # [rows, seq, 2]
        rows, seq = offsets.shape[:2]
        ctx = np.stack(
            [np.asarray(enc.sequence_ids(r), dtype=object) == 1 for r in range(rows)]
        ).astype(bool)  # [rows, seq]
        span = np.zeros((rows, 2), np.int32)  # [rows, 2] (start, end)
        for r in range(rows):
            span[r] = _window_labels(ctx[r], offsets[r], *targets[example_index[r]])

        arrays = {k: np.asarray(enc[k], dtype=np.int32) for k in MODEL_INPUTS}
        arrays["labels"] = span
        # CLS stays a class: it is the target of windows that do not hold the answer.
        arrays["context_mask"] = ctx | (np.arange(seq) == 0)[None, :]
        meta = {
            "example_index": example_index,
            "offsets": np.where(ctx[..., None], offsets, -1).astype(np.int32),
            "ids": ids,
            "contexts": contexts,
            "answers": golds,
            "max_answer_length": cfg.max_answer_length,
            "n_best": cfg.n_best,
        }
        info["examples"] = len(ids)
        info["rows"] = int(rows)
        info["windows_with_answer"] = int((span[:, 0] > 0).sum())
        return Encoded(arrays, meta, info)

    @staticmethod
    def _check_stride(questions: list[str], tokenizer, cfg: DataConfig) -> None:
        # The overlap must be shorter than a window's context, or windows could never advance.
        longest = max(len(x) for x in tokenizer(questions, add_special_tokens=False)["input_ids"])
        room = cfg.max_length - longest - tokenizer.num_special_tokens_to_add(pair=True)
        if cfg.doc_stride >= room:
            fix = (
                f"at most {room - 1}"
                if room > 1
                else "none fits: raise data.max_length or shorten the questions"
            )
            raise ValueError(
                f"data.doc_stride: {cfg.doc_stride} must be smaller than the {room} tokens left "
                f"for the context after the longest question ({longest} tokens) at "
                f"data.max_length {cfg.max_length}; {fix}"
            )

    def loss_inputs(self, logits: jax.Array, batch: dict[str, jax.Array]) -> LossInputs:
        """Start and end distributions over the window's context positions and CLS."""
        z = jnp.swapaxes(logits, 1, 2)  # [batch, 2, seq]
        mask = jnp.broadcast_to(batch["weight"][:, None], z.shape[:2])  # [batch, 2]
        class_mask = batch["context_mask"][:, None, :]  # [batch, 1, seq]
        return z, batch["labels"], mask, class_mask

    def decode(
        self, logits: np.ndarray, enc: Encoded, cfg: DataConfig | None = None
    ) -> dict[str, str]:
        """Row logits [rows, seq, 2] -> answer text per example id ("" when no span is valid).

        `max_answer_length` and `n_best` come from `cfg` when given, else from encoding time.
        """
        max_len = cfg.max_answer_length if cfg else enc.meta["max_answer_length"]
        n_best = cfg.n_best if cfg else enc.meta["n_best"]
        logits = np.asarray(logits)
        offsets = enc.meta["offsets"]  # [rows, seq, 2], -1 outside the context
        if logits.shape != (*offsets.shape[:2], 2):
            raise ValueError(
                f"logits: expected shape {(*offsets.shape[:2], 2)} (rows, seq, start/end), "
                f"got {logits.shape}"
            )
        valid = offsets[..., 0] >= 0  # [rows, seq]; excludes CLS, question and padding
        parts = [
            _best_spans(
                logits[i : i + _DECODE_CHUNK, :, 0],
                logits[i : i + _DECODE_CHUNK, :, 1],
                valid[i : i + _DECODE_CHUNK],
                n_best,
                max_len,
            )
            for i in range(0, len(logits), _DECODE_CHUNK)
        ]
        score, start, end = (np.concatenate(x) for x in zip(*parts, strict=True))
        n = len(enc.meta["ids"])
        best_score = np.full(n, -np.inf)
        best_row = np.full(n, -1)
        # Rows in order, strictly greater wins: on a tie the earlier window is kept.
        for r, ex in enumerate(enc.meta["example_index"]):
            if score[r] > best_score[ex]:
                best_score[ex], best_row[ex] = score[r], r
        out = {}
        for ex, (qid, context) in enumerate(
            zip(enc.meta["ids"], enc.meta["contexts"], strict=True)
        ):
            r = best_row[ex]
            text = ""
            if r >= 0:
                text = context[offsets[r, start[r], 0] : offsets[r, end[r], 1]]
            out[qid] = text
        return out

    def evaluate(
        self,
        logits: np.ndarray,
        enc: Encoded,
        labels: tuple[str, ...],
        teacher_logits: np.ndarray | None = None,
    ) -> dict[str, float]:
        """SQuAD EM/F1 (fractions), the mean start/end cross-entropy per row, and agreement."""
        pred = self.decode(logits, enc)
        refs = dict(zip(enc.meta["ids"], enc.meta["answers"], strict=True))
        scores = squad_em_f1(pred, refs)
        cm = enc.arrays["context_mask"][..., None]  # [rows, seq, 1]
        logp = log_softmax(np.where(cm, logits, -np.inf), axis=1)  # [rows, seq, 2]
        gold = enc.arrays["labels"]  # [rows, 2]
        picked = np.take_along_axis(logp, gold[:, None, :].astype(np.int64), axis=1)[:, 0]
        out = {
            "exact_match": scores["exact_match"] / 100.0,
            "f1": scores["f1"] / 100.0,
            "loss": float(-picked.mean()),  # mean of the two CEs, averaged over rows
        }
        if teacher_logits is not None:
            teacher = self.decode(teacher_logits, enc)
            out["agreement"] = float(np.mean([pred[q] == teacher[q] for q in enc.meta["ids"]]))
        return out

    def outcomes(self, logits, enc: Encoded, labels) -> dict[str, list]:
        """Per question (by its id): `values` its F1 and `em` its exact match, as fractions;
        their means are the split's f1 and exact_match."""
        pred = self.decode(logits, enc)
        ids, f1, em = [], [], []
        for qid, golds in zip(enc.meta["ids"], enc.meta["answers"], strict=True):
            s = squad_em_f1({qid: pred[qid]} if qid in pred else {}, {qid: golds})
            ids.append(qid)
            f1.append(round(s["f1"] / 100.0, 4))
            em.append(int(s["exact_match"] == 100.0))
        return {"ids": ids, "values": f1, "em": em}
