"""Length-grouped batches cover every example once, and trimming padding changes no output."""

import numpy as np
from flax import nnx

from kdjax.config import MeshConfig
from kdjax.models import random_student
from kdjax.models.config import EncoderConfig
from kdjax.tasks import Encoded
from kdjax.training.batching import bucket_length, epoch_batches
from kdjax.training.evaluate import predict_logits
from kdjax.training.mesh import make_mesh, replicated
from kdjax.training.step import make_predict


def test_every_example_once_per_epoch():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 64, size=1000)
    for group in (False, True):
        batches = epoch_batches(lengths, 32, np.random.default_rng(1), group)
        assert len(batches) == 32  # ceil(1000 / 32)
        seen = np.sort(np.concatenate(batches))
        np.testing.assert_array_equal(seen, np.arange(1000))
    grouped = epoch_batches(lengths, 32, np.random.default_rng(1), True)
    spread = np.mean([np.ptp(lengths[b]) for b in grouped])
    assert spread < 10  # similar lengths share a batch (random batches span ~60)


def test_bucket_length():
    assert [bucket_length(n, 64) for n in (1, 16, 17, 33, 64, 70)] == [16, 16, 32, 48, 64, 64]
    assert bucket_length(30, 24) == 24


def test_trimmed_evaluation_equals_full_padding():
    rng = np.random.default_rng(0)
    n, seq = 37, 48
    lengths = rng.integers(2, seq + 1, size=n)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    split = Encoded(
        {
            "input_ids": (rng.integers(1, 97, size=(n, seq)) * mask).astype(np.int32),
            "attention_mask": mask,
            "token_type_ids": np.zeros((n, seq), np.int32),
            "labels": np.zeros(n, np.int32),
        }
    )
    mesh = make_mesh(MeshConfig(data=8))
    model = random_student(
        "classification",
        3,
        layers=2,
        hidden=32,
        heads=4,
        intermediate=64,
        base=EncoderConfig(vocab_size=97, max_position_embeddings=seq),
        sharding=replicated(mesh),
    )
    graphdef, params = nnx.split(model)
    predict = make_predict(graphdef)
    full = predict_logits(predict, params, split, mesh, 10, trim=False)
    trimmed = predict_logits(predict, params, split, mesh, 10, trim=True)
    assert full.shape == (n, 3)
    np.testing.assert_allclose(trimmed, full, atol=1e-5, rtol=0)


def test_diagnostics_against_hand_computed_values():
    from kdjax.tasks import get_task
    from kdjax.training.diagnostics import diagnostics, expected_calibration_error

    # ECE by hand: confidences 0.9 (right), 0.9 (wrong), 0.6 (right) in 15 bins.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    gold = np.array([0, 1, 1])
    assert abs(expected_calibration_error(probs, gold) - (2 / 3 * 0.4 + 1 / 3 * 0.4)) < 1e-12
    s = np.log(np.array([[0.7, 0.3], [0.2, 0.8]]))
    t = np.log(np.array([[0.4, 0.6], [0.1, 0.9]]))
    enc = Encoded({"input_ids": np.zeros((2, 4), np.int32), "labels": np.array([0, 1])})
    d = diagnostics(get_task("classification"), s, t, enc)
    kl = np.mean(
        [
            0.4 * np.log(0.4 / 0.7) + 0.6 * np.log(0.6 / 0.3),
            0.1 * np.log(0.1 / 0.2) + 0.9 * np.log(0.9 / 0.8),
        ]
    )
    assert abs(d["kl_t1"] - kl) < 1e-9 and d["agreement_dist"] == 0.5


def test_prefetch_keeps_order_raises_where_the_producer_failed_and_stops_early():
    import pytest

    from kdjax.training.batching import prefetch

    assert list(prefetch(iter(range(50)), ahead=3)) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise KeyError("bad row")

    got = []
    with pytest.raises(KeyError, match="bad row"):
        for x in prefetch(failing()):
            got.append(x)
    assert got == [1, 2]
    made = []

    def endless():
        i = 0
        while True:
            made.append(i)
            yield i
            i += 1

    for x in prefetch(endless(), ahead=2):
        if x == 5:
            break  # the producer thread stops instead of running on
    assert len(made) <= 5 + 1 + 2 + 1
