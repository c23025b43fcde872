"""Extractive QA: SQuAD JSON reading, windowing and labels, span decoding, metrics and loss."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from transformers import AutoTokenizer

from kdjax.config import DataConfig
from kdjax.data.squad import read_squad_json
from kdjax.losses import kd_loss
from kdjax.metrics import normalize_answer
from kdjax.tasks.extractive_qa import ExtractiveQA

DATA = Path(__file__).parent / "data" / "qa"
TASK = ExtractiveQA()
COLS = TASK.raw_columns


def _cfg(**kw) -> DataConfig:
    kw = {"max_length": 64, "doc_stride": 16, **kw}
    return DataConfig(source="files", files={"train": "unused.json"}, **kw)


def _columns(rows: list[dict]) -> dict[str, list]:
    return {k: [r[k] for r in rows] for k in COLS}


@pytest.fixture(scope="module")
def tok(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def train_rows():
    return read_squad_json(DATA / "train.json")


@pytest.fixture(scope="module")
def train(tok, train_rows):
    return TASK.encode(_columns(train_rows), tok, (), _cfg())


@pytest.fixture(scope="module")
def dev(tok):
    return TASK.encode(_columns(read_squad_json(DATA / "dev.json")), tok, (), _cfg())


def _rows_of(enc, qid: str) -> np.ndarray:
    return np.flatnonzero(enc.meta["example_index"] == enc.meta["ids"].index(qid))


def _span_text(enc, row: int, start: int, end: int) -> str:
    off = enc.meta["offsets"][row]
    context = enc.meta["contexts"][enc.meta["example_index"][row]]
    return context[off[start, 0] : off[end, 1]]


def _gold_logits(enc, rng) -> np.ndarray:
    """Small noise everywhere, large at the labelled span of every window holding the answer."""
    logits = rng.normal(0, 0.1, (len(enc), enc.seq_len, 2)).astype(np.float32)
    for r, (s, e) in enumerate(enc.arrays["labels"]):
        if s > 0:
            logits[r, s, 0] = logits[r, e, 1] = 10.0
        else:
            # CLS is a training target but never a decoded answer.
            logits[r, 0] = 50.0
    return logits


# --------------------------------------------------------------------------- reading


def test_read_squad_json_flat_rows(train_rows):
    dev_rows = read_squad_json(DATA / "dev.json")
    assert len(train_rows) == 12 and len(dev_rows) == 6
    assert len({r["id"] for r in train_rows}) == 12
    row = train_rows[0]
    assert set(row) == {"id", "title", "context", "question", "answers"}
    assert row["title"] == "Harwick_lighthouse"
    assert row["answers"] == {"text": ["1843"], "answer_start": [row["context"].index("1843")]}
    assert len({r["context"] for r in train_rows}) == 3
    assert all(len(r["answers"]["text"]) == 2 for r in dev_rows)


@pytest.mark.parametrize(
    "doc",
    [
        {"version": "1.1"},
        [{"title": "x"}],
        {"data": [{"title": "x", "paragraphs": [{"qas": []}]}]},
        {"data": [{"paragraphs": [{"context": "c", "qas": [{"question": "q?"}]}]}]},
        {
            "data": [
                {
                    "paragraphs": [
                        {"context": "c", "qas": [{"id": 1, "question": "q?", "answers": ["c"]}]}
                    ]
                }
            ]
        },
    ],
)
def test_read_squad_json_bad_shape(tmp_path, doc):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"bad\.json.*not SQuAD-format.*expected"):
        read_squad_json(path)


# --------------------------------------------------------------------------- windows and labels


def test_columns_and_labels_of():
    cfg = _cfg(id_column="qid", answers_column="detected_answers", answers_format="mrqa")
    assert TASK.columns(cfg) == {
        "id": "qid",
        "question": "question",
        "context": "context",
        "answers": "detected_answers",
    }
    assert TASK.labels_of({"answers": [{"text": ["a"], "answer_start": [0]}]}) == []
    assert (TASK.name, TASK.metric, TASK.raw_columns) == (
        "extractive_qa",
        "f1",
        ("id", "question", "context", "answers"),
    )


def test_arrays_shapes_and_dtypes(train):
    rows = len(train)
    assert rows == train.info["rows"] > train.info["examples"] == 12
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert train.arrays[k].shape == (rows, 64) and train.arrays[k].dtype == np.int32
    assert train.arrays["labels"].shape == (rows, 2) and train.arrays["labels"].dtype == np.int32
    assert train.arrays["context_mask"].dtype == bool
    assert train.meta["offsets"].shape == (rows, 64, 2)
    assert train.meta["example_index"].shape == (rows,)


def test_long_context_windows_overlap_by_stride(train, train_rows):
    rows = _rows_of(train, "t01")
    assert len(rows) >= 3
    context = train_rows[0]["context"]
    spans = []
    for r in rows:
        off = train.meta["offsets"][r]
        spans.append(off[off[:, 0] >= 0])  # [context tokens, 2]
    assert spans[0][0, 0] == 0 and spans[-1][-1, 1] == len(context)
    for a, b in zip(spans, spans[1:], strict=False):
        # The next window restarts exactly `doc_stride` tokens before this one ended.
        np.testing.assert_array_equal(a[-16:], b[:16])
        assert not np.array_equal(a[-17:], b[:17])


def test_labels_decode_to_gold_and_others_point_at_cls(train, train_rows):
    gold = {r["id"]: r["answers"]["text"][0] for r in train_rows}
    labels = train.arrays["labels"]
    found = set()
    for r, (s, e) in enumerate(labels):
        qid = train.meta["ids"][train.meta["example_index"][r]]
        off = train.meta["offsets"][r]
        ctx = off[:, 0] >= 0
        if s > 0:
            assert ctx[s] and ctx[e] and e >= s
            assert normalize_answer(_span_text(train, r, s, e)) == normalize_answer(gold[qid])
            found.add(qid)
        else:
            assert e == 0
            # The answer is not wholly inside this window's context.
            context = train.meta["contexts"][train.meta["example_index"][r]]
            lo, hi = off[ctx][0, 0], off[ctx][-1, 1]
            assert gold[qid] not in context[lo:hi]
    assert found == set(gold)
    assert train.info["windows_with_answer"] == int((labels[:, 0] > 0).sum())
    # An answer late in the long context is only labelled in a later window.
    rows = _rows_of(train, "t05")
    assert tuple(labels[rows[0]]) == (0, 0) and labels[rows[3], 0] > 0


def test_context_mask_is_context_tokens_and_cls(tok, train):
    a = train.arrays
    # BERT pairs: the context carries token type 1, as does the final [SEP].
    context = (a["token_type_ids"] == 1) & (a["attention_mask"] == 1)
    context &= a["input_ids"] != tok.sep_token_id
    expected = context.copy()
    expected[:, 0] = True
    np.testing.assert_array_equal(a["context_mask"], expected)
    np.testing.assert_array_equal(train.meta["offsets"][..., 0] >= 0, context)
    assert np.all(train.meta["offsets"][~context] == -1)


def test_relocated_answer(train, train_rows):
    assert train.info["answers_relocated"] == 1
    assert train.info["dropped_answer_mismatch"] == 0
    (r,) = [r for r in _rows_of(train, "t05") if train.arrays["labels"][r, 0] > 0]
    assert _span_text(train, r, *train.arrays["labels"][r]) == "Thomas Penhale"


def test_nearest_occurrence_and_drop_counts(tok):
    context = "The cat sat. Later the cat ran off with another cat."
    second = context.index("cat", 10)
    rows = {
        "id": ["near", "gone", "noq", "noctx", "none"],
        "question": ["Who ran?", "Who flew?", "  ", "What?", "Who?"],
        "context": [context, context, context, "", context],
        "answers": [
            {"text": ["cat"], "answer_start": [second - 2]},
            {"text": ["dog"], "answer_start": [4]},
            {"text": ["cat"], "answer_start": [4]},
            {"text": ["cat"], "answer_start": [4]},
            {"text": [], "answer_start": []},
        ],
    }
    enc = TASK.encode(rows, tok, (), _cfg())
    assert enc.meta["ids"] == ["near"]
    assert enc.info["examples"] == 1
    assert enc.info["answers_relocated"] == 1
    assert enc.info["dropped_answer_mismatch"] == 1
    assert enc.info["dropped_empty"] == 2
    assert enc.info["dropped_no_answer"] == 1
    s, e = enc.arrays["labels"][0]
    assert s == e and enc.meta["offsets"][0, s, 0] == second


def test_doc_stride_too_large(tok, train_rows):
    cols = _columns(train_rows)
    longest = max(len(tok(q, add_special_tokens=False)["input_ids"]) for q in cols["question"])
    room = 64 - longest - 3
    enc = TASK.encode(cols, tok, (), _cfg(doc_stride=room - 1))
    assert enc.info["rows"] > enc.info["examples"]
    with pytest.raises(ValueError, match=rf"data\.doc_stride.*at most {room - 1}"):
        TASK.encode(cols, tok, (), _cfg(doc_stride=room))


def test_mrqa_detected_answers(tok):
    context = "The river Tamsin reaches the sea at Port Aldry, a small town."
    start = context.index("Port Aldry")
    detected = {
        "text": ["Port Aldry"],
        "char_spans": [{"start": [start], "end": [start + len("Port Aldry") - 1]}],
        "token_spans": [{"start": [7], "end": [8]}],
    }
    cols = {"id": ["m1"], "question": ["Where?"], "context": [context], "answers": [detected]}
    enc = TASK.encode(cols, tok, (), _cfg(answers_format="mrqa"))
    assert enc.meta["answers"] == [["Port Aldry"]]
    assert _span_text(enc, 0, *enc.arrays["labels"][0]) == "Port Aldry"
    cols["answers"] = [["Port Aldry"]]  # MRQA's plain `answers` column is not a span
    with pytest.raises(ValueError, match="detected_answers"):
        TASK.encode(cols, tok, (), _cfg(answers_format="mrqa"))


# --------------------------------------------------------------------------- decoding and metrics


def test_decode_gold_logits_reproduce_gold(dev):
    logits = _gold_logits(dev, np.random.default_rng(0))
    pred = TASK.decode(logits, dev)
    assert pred == {q: a[0] for q, a in zip(dev.meta["ids"], dev.meta["answers"], strict=True)}
    out = TASK.evaluate(logits, dev, ())
    assert out["exact_match"] == 1.0 and out["f1"] == 1.0


def test_outcomes_per_question_average_to_the_metrics(dev):
    rng = np.random.default_rng(0)
    logits = _gold_logits(dev, rng)
    logits[::2] = rng.normal(size=logits[::2].shape)  # wrong, or partly right, on some rows
    m, out = TASK.evaluate(logits, dev, ()), TASK.outcomes(logits, dev, ())
    assert out["ids"] == list(dev.meta["ids"]) and set(out["em"]) <= {0, 1}
    assert 0 < m["f1"] < 1
    assert np.mean(out["values"]) == pytest.approx(m["f1"], abs=1e-4)
    assert np.mean(out["em"]) == pytest.approx(m["exact_match"])


def test_decode_respects_max_answer_length(tok):
    context = "alpha beta gamma delta epsilon zeta eta theta"
    cols = {
        "id": ["x"],
        "question": ["Which?"],
        "context": [context],
        "answers": [{"text": ["gamma"], "answer_start": [context.index("gamma")]}],
    }
    enc = TASK.encode(cols, tok, (), _cfg(max_answer_length=3))
    pos = np.flatnonzero(enc.meta["offsets"][0, :, 0] >= 0)  # one token per word
    logits = np.full((1, enc.seq_len, 2), -10.0, np.float32)
    logits[0, pos[0], 0] = logits[0, pos[5], 1] = 10.0  # best, but 6 tokens long
    logits[0, pos[7], 0] = 9.0  # starts after the best end: not a span
    logits[0, pos[2], 0] = logits[0, pos[3], 1] = 4.0  # valid, 2 tokens
    assert TASK.decode(logits, enc) == {"x": "gamma delta"}
    assert TASK.decode(logits, enc, _cfg(max_answer_length=6)) == {
        "x": "alpha beta gamma delta epsilon zeta"
    }
    # No valid span at all: the empty answer.
    none = np.zeros_like(logits)
    none[0, pos[4], 0], none[0, pos[1], 1] = 10.0, 10.0
    assert TASK.decode(none, enc, _cfg(n_best=1)) == {"x": ""}


def test_best_scoring_window_wins(train):
    r0, r1 = _rows_of(train, "t01")[:2]
    pos0 = np.flatnonzero(train.meta["offsets"][r0, :, 0] >= 0)[0]  # only in the first window
    pos1 = np.flatnonzero(train.meta["offsets"][r1, :, 0] >= 0)[-1]  # only in the second
    first, second = _span_text(train, r0, pos0, pos0), _span_text(train, r1, pos1, pos1)
    assert first != second
    for s0, s1, want in ((6.0, 8.0, second), (8.0, 6.0, first)):
        logits = np.zeros((len(train), train.seq_len, 2), np.float32)
        logits[r0, pos0] = s0
        logits[r1, pos1] = s1
        assert TASK.decode(logits, train)["t01"] == want


def test_evaluate_loss_matches_numpy_reference_and_agreement(dev):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (len(dev), dev.seq_len, 2)).astype(np.float32)
    out = TASK.evaluate(logits, dev, (), teacher_logits=logits.copy())
    ref = []
    for r in range(len(dev)):
        cm = dev.arrays["context_mask"][r]
        ces = []
        for j in range(2):
            z = logits[r, :, j].astype(np.float64)
            lse = np.log(np.exp(z[cm] - z[cm].max()).sum()) + z[cm].max()
            ces.append(lse - z[dev.arrays["labels"][r, j]])
        ref.append(0.5 * sum(ces))
    assert out["loss"] == pytest.approx(np.mean(ref), rel=1e-12)
    assert out["agreement"] == 1.0
    assert all(type(v) is float for v in out.values())
    assert set(out) == {"exact_match", "f1", "loss", "agreement"}
    other = TASK.evaluate(logits, dev, (), teacher_logits=-logits)
    assert other["agreement"] < 1.0
    assert 0.0 <= out["exact_match"] <= out["f1"] <= 1.0


# --------------------------------------------------------------------------- training loss


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def test_loss_inputs_kd_loss_matches_reference_and_masks_gradients(train):
    rows = np.arange(8)
    batch = {k: v[rows] for k, v in train.arrays.items()}
    batch["weight"] = np.array([1, 1, 1, 1, 1, 1, 1, 0], np.float32)  # last: a padding row
    rng = np.random.default_rng(2)
    z_s = rng.normal(0, 3, (8, train.seq_len, 2)).astype(np.float32)
    z_t = rng.normal(0, 3, (8, train.seq_len, 2)).astype(np.float32)

    def loss(s, t, b):
        z, labels, mask, class_mask = TASK.loss_inputs(s, b)
        zt = TASK.loss_inputs(t, b)[0]
        return kd_loss(
            z,
            zt,
            labels,
            distance="ce",
            alpha=0.5,
            tau_t=2.0,
            tau_s=1.0,
            mask=mask,
            class_mask=class_mask,
        )

    jb = {k: jnp.asarray(v) for k, v in batch.items()}
    value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(z_s), jnp.asarray(z_t), jb)
    value, grad = float(value), np.asarray(grad)  # grad: [batch, seq, 2]

    label_terms, kd_terms = [], []
    for r in range(7):
        cm = batch["context_mask"][r]
        pos = np.flatnonzero(cm)
        for j in range(2):
            logp_s = _np_log_softmax(z_s[r, pos, j].astype(np.float64))
            p_t = np.exp(_np_log_softmax(z_t[r, pos, j].astype(np.float64) / 2.0))
            label_terms.append(-logp_s[np.searchsorted(pos, batch["labels"][r, j])])
            kd_terms.append(-(p_t * logp_s).sum())
    ref = 0.5 * np.mean(label_terms) + 0.5 * np.mean(kd_terms)
    assert np.isfinite(value)
    np.testing.assert_allclose(value, ref, atol=1e-5)

    masked = ~batch["context_mask"]  # [batch, seq]: question, special tokens, padding
    assert masked.any()
    assert np.all(grad[masked] == 0.0)
    assert np.all(grad[7] == 0.0)  # the zero-weight row
    assert np.abs(grad[:7][~masked[:7]]).sum() > 0
