"""Evaluation metrics: accuracy, CoNLL entity F1 and SQuAD v1.1 EM/F1.

Pure Python + numpy. ``entity_f1`` reproduces seqeval's default (conlleval-compatible) mode
number for number, and ``squad_em_f1`` reproduces the official SQuAD v1.1 evaluation script,
so scores are comparable with published results.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["accuracy", "entity_f1", "normalize_answer", "squad_em_f1"]


def accuracy(pred: np.ndarray, gold: np.ndarray) -> float:
    """Fraction of positions where ``pred == gold``; 0.0 for empty inputs."""
    pred = np.asarray(pred)
    gold = np.asarray(gold)
    if pred.shape != gold.shape:
        raise ValueError(f"pred shape {pred.shape} != gold shape {gold.shape}")
    if pred.size == 0:
        return 0.0
    return float(np.mean(pred == gold))


# --------------------------------------------------------------------------- entity F1


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk ended between the previous and the current token (conlleval rules)."""
    if prev_tag in ("E", "S"):
        return True
    if prev_tag in ("B", "I") and tag in ("B", "S", "O"):
        return True
    # '.' is exempt because conlleval uses it as a sentence-boundary marker.
    return prev_tag != "O" and prev_tag != "." and prev_type != type_


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    """Whether a chunk started at the current token (conlleval rules)."""
    if tag in ("B", "S"):
        return True
    # An E-/I- tag that does not continue an open chunk opens a new one.
    if prev_tag in ("E", "S", "O") and tag in ("E", "I"):
        return True
    return tag != "O" and tag != "." and prev_type != type_


def _get_entities(seq: list[str]) -> list[tuple[str, int, int]]:
    """Chunks ``(type, start, end)`` (inclusive) of one flat tag sequence, as seqeval finds them.

    The prefix is the first character and the type is what follows the first '-' (or the
    rest of the tag when there is no '-'), '_' when empty. The state machine is kept exactly
    as seqeval's, including its quirks for unknown prefixes, so the chunks are the same.
    """
    prev_tag = "O"
    prev_type = ""
    begin = 0
    chunks = []
    # A trailing 'O' closes a chunk still open at the end.
    for i, chunk in enumerate([*seq, "O"]):
        tag = chunk[0]
        type_ = chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _end_of_chunk(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _start_of_chunk(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag = tag
        prev_type = type_
    return chunks


def _flatten(sequences: Sequence[Sequence[str]]) -> list[str]:
    # An 'O' after every sequence keeps an entity from running into the next sequence;
    # seqeval joins sequences the same way, so chunk offsets and boundaries agree.
    flat: list[str] = []
    for seq in sequences:
        flat.extend(seq)
        flat.append("O")
    return flat


def _prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    # Same operations in the same order as seqeval (F from P and R, not from counts), so the
    # floats are bit-identical; 0/0 gives 0.0 as seqeval's default zero_division does.
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    denom = precision + recall
    f1 = 2 * precision * recall / denom if denom else 0.0
    return float(precision), float(recall), float(f1)


def entity_f1(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict:
    """Micro entity precision/recall/F1 identical to seqeval's default mode.

    Returns ``{"precision", "recall", "f1", "support", "per_type"}`` where ``support`` is the
    number of true entities and ``per_type`` maps each entity type (found in either input)
    to ``{"precision", "recall", "f1", "support"}``.
    """
    if len(true_tags) != len(pred_tags):
        raise ValueError(
            f"true_tags has {len(true_tags)} sequences but pred_tags has {len(pred_tags)}"
        )
    for i, (t, p) in enumerate(zip(true_tags, pred_tags, strict=True)):
        if len(t) != len(p):
            raise ValueError(
                f"sequence {i}: true_tags has {len(t)} tags but pred_tags has {len(p)}"
            )

    true_by_type: dict[str, set[tuple[int, int]]] = {}
    pred_by_type: dict[str, set[tuple[int, int]]] = {}
    for type_, start, end in _get_entities(_flatten(true_tags)):
        true_by_type.setdefault(type_, set()).add((start, end))
    for type_, start, end in _get_entities(_flatten(pred_tags)):
        pred_by_type.setdefault(type_, set()).add((start, end))

    per_type = {}
    tp_total = pred_total = true_total = 0
    for type_ in sorted(true_by_type.keys() | pred_by_type.keys()):
        true_set = true_by_type.get(type_, set())
        pred_set = pred_by_type.get(type_, set())
        tp = len(true_set & pred_set)
        p, r, f = _prf(tp, len(pred_set), len(true_set))
        per_type[type_] = {"precision": p, "recall": r, "f1": f, "support": len(true_set)}
        tp_total += tp
        pred_total += len(pred_set)
        true_total += len(true_set)

    p, r, f = _prf(tp_total, pred_total, true_total)
    return {"precision": p, "recall": r, "f1": f, "support": true_total, "per_type": per_type}


# --------------------------------------------------------------------------- SQuAD v1.1

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation, drop articles, collapse whitespace (SQuAD v1.1 order)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _token_f1(prediction: str, ground_truth: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(ground_truth).split()
    num_same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    # Also covers empty normalized answers: no common tokens scores 0, as officially.
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(pred_tokens)
    recall = 1.0 * num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def squad_em_f1(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict:
    """SQuAD v1.1 exact match and F1 in percent, averaged over the questions in ``references``.

    A question without a prediction scores 0; predictions for unknown ids are ignored.
    Returns ``{"exact_match", "f1", "count"}``.
    """
    exact_match = 0
    f1 = 0.0
    for qid, golds in references.items():
        if isinstance(golds, str):
            raise TypeError(f"references[{qid!r}] must be a list of answers, not a string")
        if len(golds) == 0:
            raise ValueError(f"references[{qid!r}] has no gold answers")
        if qid not in predictions:
            continue
        pred = predictions[qid]
        norm_pred = normalize_answer(pred)
        exact_match += max(norm_pred == normalize_answer(g) for g in golds)
        f1 += max(_token_f1(pred, g) for g in golds)
    count = len(references)
    if count == 0:
        return {"exact_match": 0.0, "f1": 0.0, "count": 0}
    return {
        "exact_match": 100.0 * exact_match / count,
        "f1": 100.0 * f1 / count,
        "count": count,
    }
