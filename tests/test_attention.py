"""Attention through jax.nn.dot_product_attention equals the explicit formulation; the
dropout masks keep the right fraction, independently of position and of each other."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kdjax.models import encoder
from kdjax.models.config import EncoderConfig


def _explicit_attention(q, k, v, attention_mask):
    """The encoder's attention before it used jax.nn.dot_product_attention: heads moved in
    front, scores / sqrt(d) plus a float32 additive mask, softmax, times v."""
    b, s, nh, hd = q.shape
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
    neg = jnp.finfo(jnp.float32).min
    bias = jnp.where(attention_mask[:, None, None, :] > 0, 0.0, neg).astype(jnp.float32)
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) / jnp.sqrt(jnp.float32(hd))
    probs = jax.nn.softmax(scores + bias, axis=-1)
    return jnp.einsum("bhqk,bhkd->bhqd", probs, v).transpose(0, 2, 1, 3)


def _padded_mask(rng, b, s):
    lengths = rng.integers(1, s + 1, size=b)
    lengths[0] = s
    return (np.arange(s)[None] < lengths[:, None]).astype(np.int32)


def test_fused_attention_equals_explicit_in_float32():
    rng = np.random.default_rng(0)
    b, s, nh, hd = 4, 24, 4, 16
    q, k, v = (jnp.asarray(rng.normal(size=(b, s, nh, hd)), jnp.float32) for _ in range(3))
    mask = _padded_mask(rng, b, s)
    ours = jax.nn.dot_product_attention(
        q, k, v, mask=jnp.asarray(mask)[:, None, None, :] > 0, implementation=encoder.ATTENTION
    )
    ref = _explicit_attention(q, k, v, jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5, rtol=0)
    # The dropout path (used in training when attention dropout is on) at rate 0 is the same.
    same = encoder._attention_with_dropout(
        q, k, v, jnp.asarray(mask)[:, None, None, :] > 0, encoder.DropoutKeys(None), 0.0
    )
    np.testing.assert_allclose(np.asarray(same), np.asarray(ref), atol=1e-5, rtol=0)


def test_layer_eval_output_equals_explicit_attention_layer():
    """A whole encoder layer in eval mode: fused attention vs the explicit one, float32."""
    cfg = EncoderConfig(vocab_size=50, hidden_size=32, num_heads=4, intermediate_size=48)
    layer = encoder.Layer(cfg, nnx.Rngs(3))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 16, 32)), jnp.float32)
    mask = jnp.asarray(_padded_mask(rng, 3, 16))
    ours = layer(x, mask[:, None, None, :] > 0, encoder.DropoutKeys(None))

    heads = lambda t: t.reshape(3, 16, 4, 8)
    q, k, v = heads(layer.query(x)), heads(layer.key(x)), heads(layer.value(x))
    ctx = _explicit_attention(q, k, v, mask).reshape(3, 16, 32)
    h = layer.attn_norm(x + layer.attn_out(ctx))
    ref = layer.output_norm(h + layer.output(jax.nn.gelu(layer.intermediate(h), False)))
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-5, rtol=0)


def test_keep_mask_rate_and_independence():
    """Planted rates: kept fractions within 5 binomial standard errors; neighbouring elements
    and two sites' masks uncorrelated; the same seed gives the same mask."""
    n = (64, 128, 128)
    for rate in (0.1, 0.5, 0.9):
        seed = jnp.asarray([12345, 678], jnp.uint32)
        keep = np.asarray(encoder.keep_mask(seed, n, rate)).astype(np.float64)
        se = np.sqrt(rate * (1 - rate) / keep.size)
        assert abs((1 - keep.mean()) - rate) < 5 * se, (rate, keep.mean())
        flat = keep.ravel() - keep.mean()
        corr = (flat[1:] * flat[:-1]).mean() / flat.var()
        assert abs(corr) < 5 / np.sqrt(flat.size), corr
        other = np.asarray(encoder.keep_mask(seed + 1, n, rate)).astype(np.float64).ravel()
        corr2 = np.corrcoef(keep.ravel(), other)[0, 1]
        assert abs(corr2) < 5 / np.sqrt(flat.size), corr2
        again = np.asarray(encoder.keep_mask(seed, n, rate)).astype(np.float64)
        np.testing.assert_array_equal(keep, again)
    assert np.asarray(encoder.keep_mask(seed, (1000,), 0.0)).all()  # rate 0 keeps all


def test_dropout_scales_kept_values_and_is_off_without_key():
    x = jnp.ones((32, 64, 16), jnp.float32)
    drop = encoder.DropoutKeys(jax.random.key(0))
    y = np.asarray(drop(x, 0.25))
    np.testing.assert_allclose(np.unique(y), [0.0, 1 / 0.75], rtol=1e-6)
    assert abs((y == 0).mean() - 0.25) < 0.01
    y2 = np.asarray(drop(x, 0.25))  # the next site draws another mask
    assert (y != y2).any()
    np.testing.assert_array_equal(np.asarray(encoder.DropoutKeys(None)(x, 0.25)), np.asarray(x))


def _tiny_model(dropout: float):
    from kdjax.models.encoder import Model

    cfg = EncoderConfig(vocab_size=50, hidden_size=32, num_heads=4, intermediate_size=48,
                        num_layers=2, max_position_embeddings=32, hidden_dropout=dropout,
                        attention_dropout=dropout)  # fmt: skip
    return nnx.split(Model(cfg, "classification", 2, rngs=nnx.Rngs(0)))


def test_scanned_layers_equal_unrolled_layers(monkeypatch):
    """Deep encoders scan their layers: same logits in eval mode, same gradients without
    dropout; with dropout each scanned layer draws its own masks."""
    rng = np.random.default_rng(2)
    ids = jnp.asarray(rng.integers(1, 50, size=(4, 16)), jnp.int32)
    mask = jnp.asarray(_padded_mask(rng, 4, 16))

    def run(graphdef, params, key):
        def loss(p, key):
            logits = nnx.merge(graphdef, p)(ids, mask, dropout_key=key)
            return (logits**2).sum(), logits

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params, key)

    graphdef, params = _tiny_model(0.0)
    (_, unrolled), g_unrolled = run(graphdef, params, None)
    monkeypatch.setattr(encoder, "SCAN_MIN_LAYERS", 2)
    (_, scanned), g_scanned = run(graphdef, params, None)
    np.testing.assert_allclose(np.asarray(scanned), np.asarray(unrolled), atol=1e-5, rtol=0)
    for a, b in zip(jax.tree.leaves(g_scanned), jax.tree.leaves(g_unrolled), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
    graphdef, params = _tiny_model(0.3)
    a = run(graphdef, params, jax.random.key(1))[0][1]
    b = run(graphdef, params, jax.random.key(2))[0][1]
    assert np.isfinite(np.asarray(a)).all() and not np.allclose(a, b)


def test_classifier_last_layer_at_cls_only_equals_the_full_layer(monkeypatch):
    """A sequence classifier's last layer runs at [CLS] only: same logits and same gradients
    as computing every position and reading [CLS], unrolled and scanned."""
    rng = np.random.default_rng(4)
    ids = jnp.asarray(rng.integers(1, 50, size=(4, 16)), jnp.int32)
    mask = jnp.asarray(_padded_mask(rng, 4, 16))
    graphdef, params = _tiny_model(0.0)

    def full(m):  # the head on the full last hidden state, as transformers computes it
        x = m.encoder(ids, mask)[:, 0]
        return m.head(jnp.tanh(m.pooler(x)))

    def both(p):
        m = nnx.merge(graphdef, p)
        return m(ids, mask), full(m)

    for scan_at in (1 << 30, 2):
        monkeypatch.setattr(encoder, "SCAN_MIN_LAYERS", scan_at)
        ours, ref = jax.jit(both)(params)
        assert ours.shape == (4, 2)
        np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=1e-6, rtol=0)
        g_ours = jax.jit(jax.grad(lambda p: (both(p)[0] ** 2).sum()))(params)
        g_ref = jax.jit(jax.grad(lambda p: (both(p)[1] ** 2).sum()))(params)
        for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
    monkeypatch.setattr(encoder, "SCAN_MIN_LAYERS", 1 << 30)  # FLOPs of an unrolled program
    with_cls_only = jax.jit(lambda p: nnx.merge(graphdef, p)(ids, mask)).lower(params)
    with_all = jax.jit(lambda p: full(nnx.merge(graphdef, p))).lower(params)
    flops = [c.compile().cost_analysis()["flops"] for c in (with_cls_only, with_all)]
    assert flops[0] < 0.8 * flops[1]  # the last of two layers is mostly skipped
