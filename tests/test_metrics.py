"""Metrics checked against references: the seqeval package and the official SQuAD v1.1 logic."""

import random
import re
import string
import warnings
from collections import Counter

import numpy as np
import pytest
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

from kdjax.metrics import accuracy, entity_f1, normalize_answer, squad_em_f1

# --------------------------------------------------------------------------- helpers


def _seqeval(true, pred):
    """seqeval's default-mode micro scores and per-type report, its warnings silenced."""
    with warnings.catch_warnings():
        # 0/0 and "not an NE tag" warnings are expected for some of the cases below.
        warnings.simplefilter("ignore")
        p = precision_score(true, pred)
        r = recall_score(true, pred)
        f = f1_score(true, pred)
        report = classification_report(true, pred, output_dict=True)
    return float(p), float(r), float(f), report


def _assert_matches_seqeval(true, pred, tol=0.0):
    ours = entity_f1(true, pred)
    p, r, f, report = _seqeval(true, pred)
    assert ours["precision"] == pytest.approx(p, abs=tol)
    assert ours["recall"] == pytest.approx(r, abs=tol)
    assert ours["f1"] == pytest.approx(f, abs=tol)

    per_type = {k: v for k, v in report.items() if not k.endswith(" avg")}
    assert set(ours["per_type"]) == set(per_type)
    for name, row in per_type.items():
        mine = ours["per_type"][name]
        assert mine["precision"] == pytest.approx(float(row["precision"]), abs=tol), name
        assert mine["recall"] == pytest.approx(float(row["recall"]), abs=tol), name
        assert mine["f1"] == pytest.approx(float(row["f1-score"]), abs=tol), name
        assert mine["support"] == int(row["support"]), name
    # The total support is the number of true entities over all types.
    assert ours["support"] == sum(int(row["support"]) for row in per_type.values())
    return ours


# --------------------------------------------------------------------------- entity F1

# (id, true, pred): one seqeval behaviour per case.
TRICKY_CASES = [
    # Plain IOB2 with one miss and one hit, as a baseline.
    (
        "iob2_basic",
        [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-MISC"]],
        [["B-PER", "I-PER", "O", "B-PER"], ["O", "B-MISC"]],
    ),
    # An I- tag with no preceding B- starts an entity (IOB1 style).
    (
        "i_without_b_starts_entity",
        [["O", "I-PER", "I-PER", "O"]],
        [["O", "B-PER", "I-PER", "O"]],
    ),
    # Adjacent same-type B- tags are two entities.
    (
        "adjacent_b_same_type",
        [["B-PER", "B-PER", "O"]],
        [["B-PER", "I-PER", "O"]],
    ),
    # B-PER I-PER B-PER: the second B- closes the first entity and opens another.
    (
        "b_i_b_same_type",
        [["B-PER", "I-PER", "B-PER"]],
        [["B-PER", "I-PER", "I-PER"]],
    ),
    # A type change inside an I- run (I-PER I-LOC) splits the run into two entities.
    (
        "type_change_in_i_run",
        [["B-PER", "I-PER", "I-LOC", "I-LOC", "O"]],
        [["B-PER", "I-PER", "B-LOC", "I-LOC", "O"]],
    ),
    # E- ends an entity and S- is a single-token entity (IOBES read in default mode).
    (
        "e_and_s_tags",
        [["B-PER", "E-PER", "S-LOC", "O", "B-MISC", "I-MISC", "E-MISC"]],
        [["B-PER", "I-PER", "S-LOC", "S-LOC", "B-MISC", "E-MISC", "E-MISC"]],
    ),
    # E- after E- (or after O) opens a new entity; I- after S- opens a new entity.
    (
        "e_e_and_s_i",
        [["E-PER", "E-PER", "S-LOC", "I-LOC", "O", "E-MISC"]],
        [["E-PER", "I-PER", "S-LOC", "I-LOC", "O", "I-MISC"]],
    ),
    # Only 'O' tags in both: no entities anywhere, 0/0 gives 0.0 everywhere.
    (
        "all_o",
        [["O", "O"], ["O"]],
        [["O", "O"], ["O"]],
    ),
    # Predictions have entities but the truth has none: recall is 0/0.
    (
        "no_true_entities",
        [["O", "O", "O"]],
        [["B-PER", "O", "B-LOC"]],
    ),
    # Truth has entities but nothing is predicted: precision is 0/0.
    (
        "no_pred_entities",
        [["B-PER", "O", "B-LOC"]],
        [["O", "O", "O"]],
    ),
    # Empty sequences contribute nothing.
    (
        "empty_sequences",
        [[], ["B-PER"], []],
        [[], ["B-PER"], []],
    ),
    # Tags with no type suffix: plain "B"/"I"/"E"/"S" get the type "_".
    (
        "no_type_suffix",
        [["B", "I", "O", "B", "B", "S", "I"]],
        [["B", "I", "O", "B", "I", "S", "B"]],
    ),
    # Suffix-less and typed tags mixed: "B" then "I-PER" is a type change.
    (
        "no_suffix_mixed_with_typed",
        [["B", "I-PER", "O", "I", "B-PER"]],
        [["B", "B-PER", "O", "B", "B-PER"]],
    ),
    # An entity at the end of one sequence does not continue into the next one's I- tags.
    (
        "no_entity_across_sequences",
        [["O", "B-PER"], ["I-PER", "O"]],
        [["O", "B-PER"], ["B-PER", "O"]],
    ),
    # Types containing '-' keep everything after the first '-' (B-ORG-X is type ORG-X).
    (
        "hyphenated_type",
        [["B-ORG-X", "I-ORG-X", "O", "B-ORG"]],
        [["B-ORG-X", "I-ORG", "O", "B-ORG"]],
    ),
    # Unknown prefixes and '.' follow seqeval's state machine (chunks by type changes).
    (
        "unknown_prefix_and_dot",
        [["X-PER", "X-PER", ".", "B-LOC", ".", "I-LOC", "U-LOC"]],
        [["X-PER", "B-PER", ".", "B-LOC", "I-LOC", "I-LOC", "U-LOC"]],
    ),
    # A suffix-less unknown tag after B keeps the chunk open past the sequence end,
    # so seqeval never emits it; the same concatenation reproduces that.
    (
        "unclosed_chunk_quirk",
        [["B", "X"], ["I", "O"], ["B-PER"]],
        [["B", "O"], ["I", "O"], ["B-PER"]],
    ),
    # Everything correct: all scores 1.0.
    (
        "perfect",
        [["B-PER", "I-PER", "O", "S-LOC"], ["B-MISC"]],
        [["B-PER", "I-PER", "O", "S-LOC"], ["B-MISC"]],
    ),
]


@pytest.mark.parametrize(
    ("true", "pred"), [c[1:] for c in TRICKY_CASES], ids=[c[0] for c in TRICKY_CASES]
)
def test_entity_f1_matches_seqeval_tricky(true, pred):
    # Same floating-point operations as seqeval, so the numbers agree exactly.
    _assert_matches_seqeval(true, pred, tol=0.0)


def test_entity_f1_known_values():
    # Hand-checked: true has PER(0-1), LOC(3); pred has PER(0-1), PER(3) -> 1 of 2 correct.
    out = entity_f1([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "B-PER"]])
    assert out["precision"] == 0.5
    assert out["recall"] == 0.5
    assert out["f1"] == 0.5
    assert out["support"] == 2
    assert out["per_type"]["PER"] == {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
    assert out["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_entity_f1_all_o_is_zero():
    out = entity_f1([["O"]], [["O"]])
    assert out == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "per_type": {}}
    # seqeval rejects an empty list of sequences (TypeError); we score it like all-O.
    assert entity_f1([], []) == out


def _perturb(rng, seq, tags):
    return [rng.choice(tags) if rng.random() < 0.3 else t for t in seq]


def _random_trials(rng, tags, n_trials):
    for _ in range(n_trials):
        n_seqs = rng.randint(1, 4)  # seqeval rejects zero sequences
        true = [[rng.choice(tags) for _ in range(rng.randint(0, 10))] for _ in range(n_seqs)]
        # Mostly near-misses of the truth (so there are hits), sometimes independent noise.
        if rng.random() < 0.7:
            pred = [_perturb(rng, s, tags) for s in true]
        else:
            pred = [[rng.choice(tags) for _ in s] for s in true]
        yield true, pred


def test_entity_f1_random_iob_vs_seqeval():
    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]
    for true, pred in _random_trials(rng, tags, 300):
        _assert_matches_seqeval(true, pred, tol=1e-12)


def test_entity_f1_random_mixed_schemes_vs_seqeval():
    # Wider tag set: E-/S-, suffix-less tags and '.' exercise the rest of the state machine.
    rng = random.Random(1)
    tags = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "S-LOC", "B", "I", "."]
    for true, pred in _random_trials(rng, tags, 300):
        _assert_matches_seqeval(true, pred, tol=1e-12)


def test_entity_f1_length_mismatch_raises():
    with pytest.raises(ValueError, match="1 sequences .* 2"):
        entity_f1([["O"]], [["O"], ["O"]])
    with pytest.raises(ValueError, match="sequence 1"):
        entity_f1([["O"], ["O", "B-PER"]], [["O"], ["O"]])


# --------------------------------------------------------------------------- accuracy


def test_accuracy():
    assert accuracy(np.array([1, 2, 3, 4]), np.array([1, 0, 3, 0])) == 0.5
    assert accuracy(np.array([[1, 1], [0, 1]]), np.array([[1, 1], [0, 1]])) == 1.0
    assert accuracy(np.array([]), np.array([])) == 0.0
    with pytest.raises(ValueError, match="shape"):
        accuracy(np.array([1, 2]), np.array([1, 2, 3]))


# --------------------------------------------------------------------------- SQuAD


def _official_normalize(s):
    # Independent transcription of the official SQuAD v1.1 evaluate-v1.1.py.
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def _official_f1(prediction, ground_truth):
    prediction_tokens = _official_normalize(prediction).split()
    ground_truth_tokens = _official_normalize(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def _official_em(prediction, ground_truth):
    return _official_normalize(prediction) == _official_normalize(ground_truth)


def _official_evaluate(predictions, references):
    f1 = exact_match = total = 0
    for qid, ground_truths in references.items():
        total += 1
        if qid not in predictions:
            continue  # the official script prints "Unanswered question ..." here
        prediction = predictions[qid]
        exact_match += max(_official_em(prediction, g) for g in ground_truths)
        f1 += max(_official_f1(prediction, g) for g in ground_truths)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


# (id, prediction, gold answers, expected EM, expected F1), expected values worked by hand.
SQUAD_CASES = [
    # Articles are dropped: both normalize to "eiffel tower".
    ("articles", "the Eiffel Tower", ["Eiffel Tower"], 100.0, 100.0),
    # Punctuation is dropped: "paris." -> "paris".
    ("punctuation", "Paris.", ["Paris"], 100.0, 100.0),
    # Case and runs of whitespace do not matter.
    ("whitespace_case", "  new   YORK\tcity ", ["New York City"], 100.0, 100.0),
    # Best gold answer wins: EM from "Denver Broncos", F1 likewise.
    ("multiple_golds", "Denver Broncos", ["Broncos", "Denver Broncos", "Denver"], 100.0, 100.0),
    # [big, red, dog] vs [red, dog]: P = 2/3, R = 1, F1 = 2*(2/3)*1/(2/3+1) = 0.8.
    ("partial_overlap", "the big red dog", ["red dog"], 0.0, 80.0),
    # Max over golds: "red dog" alone gives EM 0 / F1 0.8; "a big red dog" matches fully.
    ("partial_vs_multiple", "big red dog!", ["red dog", "a big red dog"], 100.0, 100.0),
    # Repeated tokens count as a bag: [dog, dog] vs [dog]: common 1, P = 1/2, R = 1, F1 = 2/3.
    ("token_bag", "dog dog", ["dog"], 0.0, 200.0 / 3),
    # Both normalize to "": strings equal so EM = 1, but no common tokens so F1 = 0.
    ("empty_normalized", "the", ["a"], 100.0, 0.0),
    # Articles only as whole words: "another" keeps "an", "theatre" keeps "the".
    ("article_word_boundary", "another theatre", ["other atre"], 0.0, 0.0),
]


@pytest.mark.parametrize(
    ("pred", "golds", "em", "f1"), [c[1:] for c in SQUAD_CASES], ids=[c[0] for c in SQUAD_CASES]
)
def test_squad_single_question(pred, golds, em, f1):
    out = squad_em_f1({"q": pred}, {"q": golds})
    assert out["count"] == 1
    assert out["exact_match"] == pytest.approx(em, abs=1e-9)
    assert out["f1"] == pytest.approx(f1, abs=1e-9)
    # The hand-worked numbers agree with the official script's logic, too.
    ref = _official_evaluate({"q": pred}, {"q": golds})
    assert ref["exact_match"] == pytest.approx(em, abs=1e-9)
    assert ref["f1"] == pytest.approx(f1, abs=1e-9)


def test_squad_missing_and_extra_predictions():
    refs = {"a": ["Paris"], "b": ["red dog"], "c": ["1990"]}
    # "c" has no prediction (scores 0); "zzz" is not a question and is ignored.
    preds = {"a": "paris", "b": "the big red dog", "zzz": "ignored"}
    out = squad_em_f1(preds, refs)
    assert out["count"] == 3
    assert out["exact_match"] == pytest.approx(100.0 / 3, abs=1e-9)
    assert out["f1"] == pytest.approx(100.0 * (1.0 + 0.8) / 3, abs=1e-9)
    ref = _official_evaluate(preds, refs)
    assert out["exact_match"] == ref["exact_match"]
    assert out["f1"] == ref["f1"]


def test_squad_matches_official_on_mixed_batch():
    refs = {str(i): [g for g, _ in pairs] for i, pairs in enumerate(_BATCH)}
    preds = {str(i): pairs[0][1] for i, pairs in enumerate(_BATCH)}
    out = squad_em_f1(preds, refs)
    ref = _official_evaluate(preds, refs)
    # Same accumulation order as the official script, so the floats are identical.
    assert out["exact_match"] == ref["exact_match"]
    assert out["f1"] == ref["f1"]


# (gold, prediction) lists; the first prediction of each list is used.
_BATCH = [
    [("The Broncos", "broncos"), ("Denver", "")],
    [("Santa Clara, California", "Santa Clara")],
    [("an apple a day", "apple day!"), ("apple", "")],
    [("Levi's Stadium", "Levis stadium in the bay area")],
    [("1,000", "1000"), ("one thousand", "")],
    [("Ünïcode — dash", "ünïcode dash")],
]


def test_normalize_answer_matches_official():
    for s in ["The  Cat's HAT!", "a-b an_c the.d", "  théâtre   of THE absurd ", "", "A"]:
        assert normalize_answer(s) == _official_normalize(s)
    # Punctuation goes before articles, so "the." becomes "the" and is then removed.
    assert normalize_answer("the. cat") == "cat"
