"""The rules every run shares, on hand-built values: the learning-rate schedule, which params
decay, gradient clipping, dropout in training and not in evaluation, classification metrics and
sentence-pair encoding."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from transformers import AutoTokenizer

from kdjax.config import DataConfig, TrainConfig
from kdjax.models import random_student
from kdjax.models.config import EncoderConfig
from kdjax.tasks import Encoded, get_task
from kdjax.training.step import TrainState, make_optimizer, make_predict, make_train_step

LR = 1e-2


def _model(dropout: float = 0.1):
    base = EncoderConfig(vocab_size=64, max_position_embeddings=16, hidden_dropout=dropout,
                         attention_dropout=dropout)  # fmt: skip
    return random_student("classification", base=base, layers=1, hidden=16, heads=2,
                          intermediate=32, labels=["a", "b"], seed=0)  # fmt: skip


def test_schedule_warms_up_linearly_then_decays_linearly_to_zero():
    # 10 steps, 20% warmup: 0 -> LR over steps 0..2, then LR -> 0 over steps 2..10.
    _, schedule = make_optimizer(TrainConfig(learning_rate=LR, warmup_ratio=0.2), 10)
    want = [0, 4, 8, 7, 6, 5, 4, 3, 2, 1, 0]  # in eighths of LR
    np.testing.assert_allclose([float(schedule(s)) for s in range(11)], np.multiply(want, LR / 8),
                               atol=1e-9)  # fmt: skip
    _, flat = make_optimizer(TrainConfig(learning_rate=LR, warmup_ratio=0.0), 4)
    np.testing.assert_allclose(
        [float(flat(s)) for s in range(5)], np.multiply([4, 3, 2, 1, 0], LR / 4)
    )


def test_weight_decay_skips_biases_and_norms():
    """With zero gradients AdamW's update is only the decay, -lr * wd * p: every matrix
    (kernels, embeddings) shrinks by exactly that and no bias or LayerNorm param moves."""
    params = nnx.split(_model())[1]
    tc = TrainConfig(learning_rate=LR, warmup_ratio=0.0, weight_decay=0.1, max_grad_norm=None)
    tx, schedule = make_optimizer(tc, 100)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)
    flat = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    moved = dict(jax.tree_util.tree_flatten_with_path(updates)[0])
    kinds = set()
    for path, p in flat.items():
        name, u = jax.tree_util.keystr(path), np.asarray(moved[path])
        if p.ndim >= 2:
            np.testing.assert_allclose(u, -float(schedule(0)) * 0.1 * np.asarray(p), rtol=1e-5,
                                       atol=1e-12, err_msg=name)  # fmt: skip
            kinds.add("matrix")
        else:
            assert not u.any(), f"{name} (a bias or norm param) decays"
            kinds.add("norm" if "norm" in name.lower() else "bias")
    assert kinds == {"matrix", "norm", "bias"}


def test_gradients_are_clipped_to_max_grad_norm():
    """Two steps with gradients of global norm 10 then 0.5: the optimizer's updates equal plain
    AdamW's on the gradients clipped to norm 1 (the first scaled by 1/10, the second not) and
    differ from AdamW's on the raw gradients."""
    params = {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}
    g1 = {"w": jnp.full((3, 4), 10 / math.sqrt(16)), "b": jnp.full(4, 10 / math.sqrt(16))}
    g2 = jax.tree.map(lambda g: -g / 20, g1)  # norm 0.5, under the limit
    assert float(optax.tree.norm(g1)) == pytest.approx(10)
    tc = TrainConfig(learning_rate=LR, warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0)
    tx, schedule = make_optimizer(tc, 10)
    plain = optax.adamw(schedule, weight_decay=0.0)

    def run(tx, grads):
        state, out = tx.init(params), []
        for g in grads:
            u, state = tx.update(g, state, params)
            out.append(u)
        return out

    got = run(tx, [g1, g2])
    clipped = run(plain, [jax.tree.map(lambda g: g / 10, g1), g2])
    raw = run(plain, [g1, g2])
    for a, b in zip(got, clipped, strict=True):
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-12), a, b)
    assert not np.allclose(got[1]["w"], raw[1]["w"], rtol=1e-3)


def test_dropout_is_on_in_training_and_off_in_evaluation():
    model = _model(dropout=0.3)
    graphdef, params = nnx.split(model)
    ids = jnp.asarray(np.arange(2, 18).reshape(2, 8) % 60, jnp.int32)
    batch = {"input_ids": ids, "attention_mask": jnp.ones_like(ids),
             "token_type_ids": jnp.zeros_like(ids), "labels": jnp.asarray([0, 1], jnp.int32),
             "weight": jnp.ones(2, jnp.float32)}  # fmt: skip
    # Evaluation: deterministic and equal to the model without any dropout key.
    predict = make_predict(graphdef)
    a, b = predict(params, batch), predict(params, batch)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, model(ids, batch["attention_mask"], batch["token_type_ids"]),
                               rtol=1e-6, atol=1e-6)  # fmt: skip
    # Training: the step's loss depends on the dropout key (same params, same batch).
    tx = optax.sgd(0.0)
    task = get_task("classification")

    def loss_fn(logits, _t, batch, _hp):
        z, y, w, _ = task.loss_inputs(logits, batch)
        return -(jax.nn.log_softmax(z)[jnp.arange(len(y)), y] * w).sum() / w.sum()

    step = make_train_step(graphdef, tx, loss_fn)
    fresh = lambda: TrainState(jax.tree.map(jnp.copy, params), tx.init(params), jnp.zeros((), int))
    loss = lambda k: float(step(fresh(), None, batch, jax.random.key(k), None)[1]["loss"])
    losses = {loss(k) for k in range(3)}
    assert len(losses) == 3
    eval_loss = float(loss_fn(a, None, batch, None))
    assert eval_loss not in losses


def test_classification_metrics_on_hand_built_logits():
    task = get_task("classification")
    enc = Encoded({"labels": np.asarray([0, 1, 1, 0], np.int32)})
    logits = np.asarray([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.0]], np.float32)
    teacher = np.asarray([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 2.0]], np.float32)
    got = task.evaluate(logits, enc, ("a", "b"), teacher)
    # Predictions 0, 1, 0, 0 (a tie goes to the first class): rows 0, 1 and 3 right.
    assert got["accuracy"] == 0.75
    # Cross-entropy of the gold class, by hand: log(1 + e^-d) for a margin d, log 2 for a tie.
    want = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)) + math.log1p(math.exp(3))
            + math.log(2)) / 4  # fmt: skip
    assert got["loss"] == pytest.approx(want, rel=1e-9)
    # Teacher predicts 0, 0, 0, 1: agrees with the student on rows 0 and 2.
    assert got["agreement"] == 0.5
    assert "agreement" not in task.evaluate(logits, enc, ("a", "b"))


def test_sentence_pairs_are_encoded_with_segment_ids(minilm_path):
    """NLI: [CLS] premise [SEP] hypothesis [SEP]; token_type_ids 0 for the first segment (its
    [CLS] and [SEP] included), 1 for the hypothesis and its [SEP], 0 on padding."""
    tok = AutoTokenizer.from_pretrained(minilm_path)
    cfg = DataConfig(source="files", files={"train": "x"}, text_pair_column="hypothesis",
                     max_length=16)  # fmt: skip
    cols = {"text": ["a cat sat", "dogs run"], "text_pair": ["it sat", "no"], "label": ["y", "n"]}
    enc = get_task("classification").encode(cols, tok, ("n", "y"), cfg)
    v = tok.get_vocab()
    cls, sep = v["[CLS]"], v["[SEP]"]
    ids = [[cls, v["a"], v["cat"], v["sat"], sep, v["it"], v["sat"], sep],
           [cls, v["dogs"], v["run"], sep, v["no"], sep]]  # fmt: skip
    types = [[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1]]
    a = enc.arrays
    for r in range(2):
        n = len(ids[r])
        assert a["input_ids"][r, :n].tolist() == ids[r]
        assert a["token_type_ids"][r, :n].tolist() == types[r]
        assert a["attention_mask"][r].tolist() == [1] * n + [0] * (a["input_ids"].shape[1] - n)
        assert not a["token_type_ids"][r, n:].any() and not a["input_ids"][r, n:].any()
    assert a["labels"].tolist() == [1, 0]


def test_a_missing_test_dependency_fails_the_test_instead_of_skipping_it(monkeypatch):
    """Reference tests import torch, seqeval, ... through `fixtures.require`: with the test
    extras installed (as here) a missing one is a failure, as is a module that moved inside an
    installed package; only KDJAX_TEST_STRICT=0 lets them skip."""
    import sys

    import fixtures

    def outcome(module: str) -> str:
        try:
            fixtures.require(module)
        except pytest.fail.Exception:
            return "fails"
        except pytest.skip.Exception:  # caught here, or the test itself would be skipped
            return "skips"
        return "imports"

    monkeypatch.delenv("KDJAX_TEST_STRICT", raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    assert outcome("torch") == "fails"
    assert outcome("numpy.moved_away") == "fails"
    assert outcome("numpy.linalg") == "imports"
    monkeypatch.setenv("KDJAX_TEST_STRICT", "0")
    assert outcome("torch") == "skips"
