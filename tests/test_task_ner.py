"""Token classification: CoNLL reading, sub-token alignment, truncation and word-level metrics."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures import require
from transformers import AutoTokenizer

from kdjax.config import DataConfig
from kdjax.data.conll import read_conll
from kdjax.losses import kd_loss
from kdjax.metrics import entity_f1
from kdjax.tasks.token_classification import TokenClassification

NER_DIR = Path(__file__).parent / "data" / "ner"
LABELS = ("B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER", "O")
L = {name: i for i, name in enumerate(LABELS)}
TASK = TokenClassification()


@pytest.fixture(scope="module")
def tok(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


def cfg(max_length: int = 128) -> DataConfig:
    return DataConfig(source="rotten_tomatoes", max_length=max_length)


def cols(rows: list[dict]) -> dict[str, list]:
    return {"tokens": [r["tokens"] for r in rows], "tags": [r["ner_tags"] for r in rows]}


def encode(tok, words, tags, max_length=128):
    return TASK.encode({"tokens": words, "tags": tags}, tok, LABELS, cfg(max_length))


def perfect_logits(enc, scale=10.0, seed=0):
    """Random logits, except a clear winner at the gold label of every labelled position."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(len(enc), enc.seq_len, len(LABELS))).astype(np.float32)  # [rows, seq, C]
    r, p = np.nonzero(enc.arrays["labels"] >= 0)
    z[r, p, enc.arrays["labels"][r, p]] += scale
    return z


def logits_for(enc, word_tags, seed=0):
    """Logits whose argmax at each word's first sub-token is the given word-level tag."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(len(enc), enc.seq_len, len(LABELS))).astype(np.float32)
    wi = enc.meta["word_index"]
    for r, p in zip(*np.nonzero(wi >= 0), strict=True):
        z[r, p, L[word_tags[r][wi[r, p]]]] += 10.0
    return z


# --------------------------------------------------------------------------- reading


@pytest.mark.parametrize("split,n", [("train", 30), ("validation", 10), ("test", 10)])
def test_read_fixtures(split, n):
    path = NER_DIR / f"{split}.conll"
    text = path.read_text()
    rows = read_conll(path)
    assert len(rows) == n
    assert text.count("-DOCSTART-") == 2  # one at the top, one mid-file
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("-DOCSTART-")]
    assert sum(len(r["tokens"]) for r in rows) == len(lines)
    for r in rows:
        assert r["tokens"] and len(r["tokens"]) == len(r["ner_tags"])
        assert "-DOCSTART-" not in r["tokens"]
        assert set(r["ner_tags"]) <= set(LABELS)  # the last column, not POS or chunk
    assert max(len(r["tokens"]) for r in rows) > 40  # long sentences are present


def test_read_first_sentence_by_hand():
    first = read_conll(NER_DIR / "train.conll")[0]
    assert first["tokens"][:3] == ["Jacques", "Chirac", "told"]
    assert first["ner_tags"][:3] == ["B-PER", "I-PER", "O"]
    assert first["tokens"][-2:] == ["Wuerttemberg", "."]
    assert first["ner_tags"][-2:] == ["B-LOC", "O"]


def test_read_edge_cases(tmp_path):
    path = tmp_path / "x.bio"
    # CRLF endings, a DOCSTART without a blank line after it, repeated blank lines, five
    # columns with the tag last, tabs, and no newline at the end of the file.
    path.write_bytes(
        b"-DOCSTART- -X- -X- O\r\nEU NNP B-NP x B-ORG\r\nrejects VBZ B-VP x O\r\n\r\n\r\n"
        b"-DOCSTART- -X- -X- O\nPeter\tB-PER\nBlackburn\tI-PER"
    )
    assert read_conll(path) == [
        {"tokens": ["EU", "rejects"], "ner_tags": ["B-ORG", "O"]},
        {"tokens": ["Peter", "Blackburn"], "ner_tags": ["B-PER", "I-PER"]},
    ]


def test_read_bad_line_names_path_and_line(tmp_path):
    path = tmp_path / "bad.conll"
    path.write_text("EU B-ORG\nrejects\n")
    with pytest.raises(ValueError, match=f"{path}:2"):
        read_conll(path)


# --------------------------------------------------------------------------- encoding


def test_task_attributes_and_columns():
    assert (TASK.name, TASK.metric, TASK.raw_columns) == (
        "token_classification",
        "f1",
        ("tokens", "tags"),
    )
    c = DataConfig(source="rotten_tomatoes", tokens_column="words", tags_column="ner")
    assert TASK.columns(c) == {"tokens": "words", "tags": "ner"}
    assert TASK.labels_of({"tokens": [["a"], ["b", "c"]], "tags": [["O"], ["B-X", "O"]]}) == [
        "O",
        "B-X",
        "O",
    ]


def test_alignment_by_hand(tok):
    enc = encode(
        tok,
        [["Schwarzenegger", "visited", "Nottinghamshire", "."], ["Germany"]],
        [["B-PER", "O", "B-ORG", "O"], ["B-LOC"]],
    )
    assert enc.seq_len == 8  # longest is exactly 8 tokens
    assert tok.convert_ids_to_tokens(enc.arrays["input_ids"][0]) == [
        "[CLS]", "schwarz", "##ene", "##gger", "visited", "nottinghamshire", ".", "[SEP]",
    ]  # fmt: skip
    x = -100
    want = [
        [x, L["B-PER"], x, x, L["O"], L["B-ORG"], L["O"], x],
        [x, L["B-LOC"], x, x, x, x, x, x],  # [CLS] germany [SEP] then padding
    ]
    np.testing.assert_array_equal(enc.arrays["labels"], want)
    np.testing.assert_array_equal(
        enc.meta["word_index"], [[-1, 0, -1, -1, 1, 2, 3, -1], [-1, 0, -1, -1, -1, -1, -1, -1]]
    )
    np.testing.assert_array_equal(enc.arrays["attention_mask"][1], [1, 1, 1, 0, 0, 0, 0, 0])
    for k in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        assert enc.arrays[k].dtype == np.int32 and enc.arrays[k].shape == (2, 8)
    assert enc.meta["gold_tags"] == [["B-PER", "O", "B-ORG", "O"], ["B-LOC"]]
    assert enc.info == {
        "examples": 2,
        "rows": 2,
        "dropped_empty": 0,
        "truncated": 0,
        "truncated_words": 0,
        "unaligned_words": 0,
    }


def test_padding_rounds_up_to_8_and_caps(tok):
    columns = cols(read_conll(NER_DIR / "validation.conll"))
    full = tok(columns["tokens"], is_split_into_words=True)["input_ids"]
    longest = max(len(ids) for ids in full)
    enc = TASK.encode(columns, tok, LABELS, cfg(256))
    assert enc.seq_len == -(-longest // 8) * 8 and enc.info["truncated"] == 0
    assert TASK.encode(columns, tok, LABELS, cfg(40)).seq_len == 40


class _NoTokenizer:
    is_fast = True

    def __call__(self, *args, **kwargs):
        raise AssertionError("tokenized before the tags were checked")


def test_unknown_tag_fails_before_tokenizing():
    columns = {"tokens": [["EU"], ["Peter"]], "tags": [["B-ORG"], ["B-FOO"]]}
    with pytest.raises(ValueError) as e:
        TASK.encode(columns, _NoTokenizer(), LABELS, cfg())
    assert str(e.value) == (
        f"data: tag 'B-FOO' in example 1 is not in the label set {list(LABELS)}; "
        "fix the data or set data.labels"
    )


def test_length_mismatch_names_example():
    columns = {"tokens": [["EU"], ["Peter", "Blackburn"]], "tags": [["B-ORG"], ["B-PER"]]}
    with pytest.raises(ValueError, match="example 1 has 2 tokens but 1 tags"):
        TASK.encode(columns, _NoTokenizer(), LABELS, cfg())


def test_empty_examples_dropped_and_counted(tok):
    enc = encode(tok, [[], ["Germany"], []], [[], ["B-LOC"], []])
    assert (enc.info["dropped_empty"], enc.info["examples"], enc.info["rows"]) == (2, 1, 1)
    assert len(enc) == 1 and enc.meta["gold_tags"] == [["B-LOC"]]
    none = encode(tok, [[]], [[]])
    assert len(none) == 0 and none.info["dropped_empty"] == 1


def test_unaligned_words_keep_alignment(tok):
    # U+200B and NUL are deleted by the BERT tokenizer: they have no sub-token at all.
    enc = encode(
        tok,
        [["Steffi", "Graf", "\u200b", "won", "in", "Germany"], ["\x00", "Paris"]],
        [["B-PER", "I-PER", "O", "O", "O", "B-LOC"], ["B-MISC", "B-LOC"]],
    )
    assert enc.info["unaligned_words"] == 2 and enc.info["truncated"] == 0
    x = -100
    np.testing.assert_array_equal(
        enc.arrays["labels"][0],
        [x, L["B-PER"], x, L["I-PER"], L["O"], L["O"], L["B-LOC"], x],
    )
    np.testing.assert_array_equal(enc.meta["word_index"][0], [-1, 0, -1, 1, 3, 4, 5, -1])
    np.testing.assert_array_equal(enc.meta["word_index"][1][:3], [-1, 1, -1])
    z = perfect_logits(enc)
    pred = TASK.predict_words(z, enc, LABELS)
    assert pred == [["B-PER", "I-PER", "O", "O", "O", "B-LOC"], ["O", "B-LOC"]]
    # The MISC entity on the deleted word counts as missed.
    m = TASK.evaluate(z, enc, LABELS)
    assert (m["precision"], m["recall"], m["accuracy"]) == (1.0, 0.75, 1.0)


def test_truncated_words_predicted_outside(tok):
    words = [
        ["Angela", "Merkel", "met", "officials", "in", "Brussels", "and", "Germany"],
        ["Germany"],
    ]
    tags = [["B-PER", "I-PER", "O", "O", "O", "B-LOC", "O", "B-LOC"], ["B-LOC"]]
    enc = encode(tok, words, tags, max_length=8)
    # [CLS] angela mer ##kel met officials in [SEP]: the last three words are cut off.
    assert enc.seq_len == 8
    assert (enc.info["truncated"], enc.info["truncated_words"]) == (1, 3)
    assert enc.meta["gold_tags"] == tags  # gold stays full length
    z = perfect_logits(enc)
    pred = TASK.predict_words(z, enc, LABELS)
    assert pred[0] == ["B-PER", "I-PER", "O", "O", "O", "O", "O", "O"]
    m = TASK.evaluate(z, enc, LABELS)
    want = entity_f1(tags, pred)
    assert (m["precision"], m["recall"], m["f1"]) == (1.0, 0.5, want["f1"])
    assert m["accuracy"] == 1.0  # over the positions that exist


# --------------------------------------------------------------------------- evaluation


@pytest.fixture(scope="module")
def val(tok):
    return TASK.encode(cols(read_conll(NER_DIR / "validation.conll")), tok, LABELS, cfg())


def test_evaluate_perfect(val):
    z = perfect_logits(val)
    m = TASK.evaluate(z, val, LABELS, teacher_logits=z.copy())
    assert m["f1"] == 1.0 and m["precision"] == 1.0 and m["recall"] == 1.0
    assert m["accuracy"] == 1.0 and m["agreement"] == 1.0
    assert set(m) == {"f1", "precision", "recall", "accuracy", "loss", "agreement"}
    assert all(type(v) is float for v in m.values())
    assert "agreement" not in TASK.evaluate(z, val, LABELS)


def test_evaluate_constructed_prediction(val):
    gold = val.meta["gold_tags"]
    # Deterministic damage: shift every third word's tag to another label.
    pred = [
        [LABELS[(L[t] + 1) % len(LABELS)] if j % 3 == 1 else t for j, t in enumerate(tags)]
        for tags in gold
    ]
    z = logits_for(val, pred)
    assert TASK.predict_words(z, val, LABELS) == pred
    m = TASK.evaluate(z, val, LABELS)
    want = entity_f1(gold, pred)
    assert 0.0 < m["f1"] < 1.0
    assert (m["f1"], m["precision"], m["recall"]) == (
        want["f1"],
        want["precision"],
        want["recall"],
    )
    # Per-sentence entity counts add up to the corpus F1.
    out = TASK.outcomes(z, val, LABELS)
    tp, n_pred, n_gold = np.asarray(out["counts"]).sum(0)
    assert out["ids"] == list(range(len(gold))) and len(out["values"]) == len(gold)
    assert 2 * tp / (n_pred + n_gold) == pytest.approx(m["f1"])
    right = [int(t == p) for t, p in zip(gold, pred, strict=True)]  # no damage: all entities right
    assert all(v >= r for v, r in zip(out["values"], right, strict=True))
    seqeval = require("seqeval.metrics", "seqeval")
    assert m["f1"] == seqeval.f1_score(gold, pred)
    flat_gold = [t for tags in gold for t in tags]
    flat_pred = [t for tags in pred for t in tags]
    assert m["accuracy"] == pytest.approx(np.mean(np.array(flat_gold) == np.array(flat_pred)))


def test_loss_and_agreement_match_numpy_reference(val):
    rng = np.random.default_rng(1)
    z = (3 * rng.normal(size=(len(val), val.seq_len, len(LABELS)))).astype(np.float32)
    t = z.copy()
    t[:, ::2] = rng.normal(size=t[:, ::2].shape)  # disagree on some positions
    nll, hits, agree = [], [], []
    for r in range(len(val)):
        for p in range(val.seq_len):
            y = val.arrays["labels"][r, p]
            if y < 0:
                continue
            v = z[r, p].astype(np.float64)
            lse = v.max() + np.log(np.sum(np.exp(v - v.max())))
            nll.append(lse - v[y])
            hits.append(np.argmax(v) == y)
            agree.append(np.argmax(v) == np.argmax(t[r, p]))
    m = TASK.evaluate(z, val, LABELS, teacher_logits=t)
    assert m["loss"] == pytest.approx(np.mean(nll), rel=1e-12)
    assert m["accuracy"] == pytest.approx(np.mean(hits), rel=1e-12)
    assert m["agreement"] == pytest.approx(np.mean(agree), rel=1e-12)
    assert 0.0 < m["agreement"] < 1.0


def test_evaluate_rejects_wrong_shape(val):
    with pytest.raises(ValueError, match="expected shape"):
        TASK.evaluate(np.zeros((len(val), val.seq_len + 1, len(LABELS)), np.float32), val, LABELS)


# --------------------------------------------------------------------------- loss inputs


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_inputs_mask_and_kd_loss(tok):
    enc = encode(
        tok,
        [
            ["Schwarzenegger", "visited", "Nottinghamshire", "."],
            ["Germany"],
            ["Mike", "Krzyzewski", "met", "Yasser", "Arafat"],
            ["Wuerttemberg", "won"],
        ],
        [["B-PER", "O", "B-ORG", "O"], ["B-LOC"], ["B-PER", "I-PER", "O", "B-PER", "I-PER"],
         ["B-LOC", "O"]],
    )  # fmt: skip
    rng = np.random.default_rng(2)
    shape = (len(enc), enc.seq_len, len(LABELS))
    zs = rng.normal(size=shape).astype(np.float32)  # [rows, seq, C]
    zt = (2 * rng.normal(size=shape)).astype(np.float32)
    weight = np.array([1, 1, 1, 0], np.float32)  # the last row is batch padding
    batch = {k: jnp.asarray(v) for k, v in enc.arrays.items()} | {"weight": jnp.asarray(weight)}

    @jax.jit
    def step(zs, zt, batch):
        logits, labels, mask, class_mask = TASK.loss_inputs(zs, batch)
        assert class_mask is None
        loss = kd_loss(
            logits, zt, labels, distance="kl", alpha=0.5, tau_t=2.0, tau_s=2.0, mask=mask
        )
        return labels, mask, loss

    labels, mask, loss = (np.asarray(a) for a in step(jnp.asarray(zs), jnp.asarray(zt), batch))
    np.testing.assert_array_equal(labels, enc.arrays["labels"])
    assert mask.dtype == np.float32 and mask.shape == enc.arrays["labels"].shape
    gold = enc.arrays["labels"]
    np.testing.assert_array_equal(mask, weight[:, None] * (gold >= 0))
    assert not mask[3].any()  # padding row
    assert not mask[:, 0].any()  # [CLS]
    assert mask[0, 1] == 1 and not mask[0, 2:4].any()  # schwarz / ##ene ##gger
    sep = np.asarray(enc.arrays["input_ids"]) == tok.sep_token_id
    assert sep.sum() == 4 and not mask[sep].any()

    # Reference: 0.5 * CE(tau 1) + 0.5 * KL(p_t || p_s) at tau 2, over masked positions.
    sel = mask > 0
    zs_, zt_, y = zs[sel].astype(np.float64), zt[sel].astype(np.float64), gold[sel]
    ce = -_log_softmax(zs_)[np.arange(len(y)), y].mean()
    lt, ls = _log_softmax(zt_ / 2.0), _log_softmax(zs_ / 2.0)
    kl = (np.exp(lt) * (lt - ls)).sum(-1).mean()
    assert np.isfinite(loss) and loss.shape == ()
    np.testing.assert_allclose(loss, 0.5 * ce + 0.5 * kl, atol=1e-5)
