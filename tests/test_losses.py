"""Tests for kdjax.losses against straightforward float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.losses import (
    DISTANCES,
    get_distance,
    kd_loss,
    label_loss,
    masked_log_softmax,
    register,
)

BUILTIN = ["ce", "cosine", "js", "kl", "mse", "reverse_kl", "tvd"]
TAUS = [(1.0, 1.0), (2.0, 1.0), (4.0, 4.0), (0.5, 2.0)]  # (tau_t, tau_s)
RTOL, ATOL = 1e-5, 1e-6


# ---------------------------------------------------------------- NumPy references (float64)


def np_log_softmax(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def np_distance(name, zs, zt, tau_s, tau_t):
    """One distribution; ``zs``/``zt`` hold only the classes that exist."""
    ls, lt = np_log_softmax(zs / tau_s), np_log_softmax(zt / tau_t)
    ps, pt = np.exp(ls), np.exp(lt)
    if name == "ce":
        return -(pt * ls).sum()
    if name == "kl":
        return (pt * (lt - ls)).sum()
    if name == "reverse_kl":
        return (ps * (ls - lt)).sum()
    if name == "js":
        m = (ps + pt) / 2
        return 0.5 * (pt * np.log(pt / m)).sum() + 0.5 * (ps * np.log(ps / m)).sum()
    if name == "tvd":
        return 0.5 * np.abs(pt - ps).sum()
    if name == "mse":
        return ((zs / tau_s - zt / tau_t) ** 2).mean()
    if name == "cosine":
        return 1 - ps @ pt / (np.linalg.norm(ps) * np.linalg.norm(pt))
    raise AssertionError(name)


def np_distances(name, zs, zt, tau_s, tau_t, class_mask=None):
    zs, zt = np.asarray(zs, np.float64), np.asarray(zt, np.float64)
    cm = np.ones(zs.shape, bool) if class_mask is None else np.broadcast_to(class_mask, zs.shape)
    out = np.zeros(zs.shape[:-1])
    for idx in np.ndindex(out.shape):
        keep = cm[idx]
        out[idx] = np_distance(name, zs[idx][keep], zt[idx][keep], tau_s, tau_t)
    return out


def np_wmean(values, weights):
    return (weights * values).sum() / weights.sum() if weights.sum() > 0 else 0.0


def np_kd(zs, zt, labels, name, alpha, tau_t, tau_s, tau_sq=False, mask=None, class_mask=None):
    zs = np.asarray(zs, np.float64)
    lead = zs.shape[:-1]
    w = np.ones(lead) if mask is None else np.asarray(mask, np.float64)
    cm = np.ones(zs.shape, bool) if class_mask is None else np.broadcast_to(class_mask, zs.shape)
    nll = np.zeros(lead)
    for idx in np.ndindex(lead):
        if labels[idx] >= 0:
            kept = list(np.flatnonzero(cm[idx]))
            nll[idx] = -np_log_softmax(zs[idx][cm[idx]])[kept.index(labels[idx])]
    l_label = np_wmean(nll, w * (np.asarray(labels) >= 0))
    d = np_wmean(np_distances(name, zs, zt, tau_s, tau_t, class_mask), w)
    if tau_sq:
        d *= tau_s * tau_t
    return (1 - alpha) * l_label + alpha * d


def logits(seed, shape, scale=2.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def labels_for(seed, shape, num_classes):
    return np.random.default_rng(seed).integers(0, num_classes, size=shape).astype(np.int32)


# ---------------------------------------------------------------- distances


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 6)])
@pytest.mark.parametrize("tau_t,tau_s", TAUS)
def test_distance_matches_numpy(name, shape, tau_t, tau_s):
    zs, zt = logits(1, shape), logits(2, shape)
    got = get_distance(name)(
        jnp.asarray(zs), jnp.asarray(zt), tau_s=tau_s, tau_t=tau_t, class_mask=None
    )
    assert got.shape == shape[:-1] and got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_distances(name, zs, zt, tau_s, tau_t), RTOL, ATOL)


@pytest.mark.parametrize("name", BUILTIN)
def test_distance_with_class_mask(name):
    shape = (4, 3, 9)
    zs, zt = logits(3, shape), logits(4, shape)
    cm = np.random.default_rng(5).random(shape) < 0.6
    cm[..., 0] = True  # every distribution keeps at least one class
    # Extreme values at masked classes must have no influence.
    zs_bad, zt_bad = np.where(cm, zs, 1e4), np.where(cm, zt, -np.inf)
    fn = get_distance(name)

    def total(z):
        return fn(z, jnp.asarray(zt_bad), tau_s=0.5, tau_t=2.0, class_mask=jnp.asarray(cm)).sum()

    got = fn(jnp.asarray(zs_bad), jnp.asarray(zt_bad), tau_s=0.5, tau_t=2.0, class_mask=cm)
    np.testing.assert_allclose(got, np_distances(name, zs, zt, 0.5, 2.0, cm), RTOL, ATOL)
    grad = np.asarray(jax.jit(jax.grad(total))(jnp.asarray(zs_bad)))
    assert np.isfinite(grad).all()
    assert (grad[~cm] == 0).all()


def test_masked_log_softmax():
    z = jnp.asarray(logits(6, (3, 5)))
    cm = jnp.asarray([True, False, True, True, False])
    logp = masked_log_softmax(z, cm)
    assert np.isfinite(np.asarray(logp)).all()
    p = np.asarray(jnp.exp(logp))
    np.testing.assert_array_equal(p[:, ~np.asarray(cm)], 0.0)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=RTOL)
    np.testing.assert_allclose(
        logp[:, np.asarray(cm)], jax.nn.log_softmax(z[:, np.asarray(cm)]), RTOL, ATOL
    )


def test_identical_distributions_have_zero_distance():
    z = jnp.asarray(logits(7, (4, 6)))
    for name in sorted(set(BUILTIN) - {"ce"}):  # ce is the entropy, not 0
        d = get_distance(name)(z, z, tau_s=2.0, tau_t=2.0, class_mask=None)
        np.testing.assert_allclose(d, 0.0, atol=ATOL, err_msg=name)


# ---------------------------------------------------------------- kd_loss vs NumPy


def test_kd_classification_with_mask():
    zs, zt = logits(10, (6, 5)), logits(11, (6, 5))
    y = labels_for(12, (6,), 5)
    mask = np.array([1, 0, 1, 1, 0, 1], np.float32)
    for name in ["kl", "js", "mse"]:
        got = kd_loss(
            zs, zt, y, distance=name, alpha=0.3, tau_t=2.0, tau_s=1.0, tau_squared=True, mask=mask
        )
        want = np_kd(zs, zt, y, name, 0.3, 2.0, 1.0, tau_sq=True, mask=mask)
        assert got.shape == () and got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, RTOL, ATOL, err_msg=name)


def test_kd_token_level_ignores_unlabelled_and_masked():
    B, S, C = 3, 5, 4
    zs, zt = logits(20, (B, S, C)), logits(21, (B, S, C))
    y = labels_for(22, (B, S), C)
    y[0, 1] = y[2, 3] = y[1, 0] = -100
    mask = np.ones((B, S), np.float32)
    mask[1, 3:] = 0
    got = kd_loss(zs, zt, y, distance="kl", alpha=0.5, tau_t=4.0, tau_s=4.0, mask=mask)
    want = np_kd(zs, zt, y, "kl", 0.5, 4.0, 4.0, mask=mask)
    np.testing.assert_allclose(got, want, RTOL, ATOL)
    # An unlabelled position still contributes to the distillation term.
    only_kd = kd_loss(zs, zt, y, distance="kl", alpha=1.0, tau_t=4.0, tau_s=4.0, mask=mask)
    np.testing.assert_allclose(only_kd, np_kd(zs, zt, y, "kl", 1.0, 4.0, 4.0, mask=mask), RTOL)


def test_kd_span_layout_with_class_mask():
    B, S = 3, 8
    zs, zt = logits(30, (B, 2, S)), logits(31, (B, 2, S))
    cm = np.ones((B, 1, S), bool)
    cm[0, 0, :2] = cm[1, 0, 5:] = cm[2, 0, [1, 4]] = False
    y = np.array([[2, 5], [0, 4], [3, 7]], np.int32)
    mask = np.array([[1, 1], [1, 1], [1, 0]], np.float32)
    # Garbage at hidden positions must not matter.
    zs_bad = np.where(cm, zs, 30.0).astype(np.float32)
    zt_bad = np.where(cm, zt, 30.0).astype(np.float32)

    def loss(z):
        return kd_loss(
            z, zt_bad, y, distance="ce", alpha=0.4, tau_t=2.0, tau_s=2.0, mask=mask, class_mask=cm
        )

    value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(zs_bad))
    want = np_kd(zs, zt, y, "ce", 0.4, 2.0, 2.0, mask=mask, class_mask=cm)
    np.testing.assert_allclose(value, want, RTOL, ATOL)
    grad = np.asarray(grad)
    assert np.isfinite(grad).all()
    assert (grad[~np.broadcast_to(cm, zs.shape)] == 0).all()
    assert (grad[2, 1] == 0).all()  # weight-0 distribution
    assert np.abs(grad[0, 0]).sum() > 0


# ---------------------------------------------------------------- properties


def test_ce_and_kl_share_gradient_but_not_value():
    zs, zt = jnp.asarray(logits(40, (4, 6))), jnp.asarray(logits(41, (4, 6)))
    y = labels_for(42, (4,), 6)

    def loss(z, name):
        return kd_loss(z, zt, y, distance=name, alpha=0.7, tau_t=2.0, tau_s=0.5)

    step = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    v_ce, g_ce = step(zs, "ce")
    v_kl, g_kl = step(zs, "kl")
    np.testing.assert_allclose(g_ce, g_kl, atol=1e-6)
    assert abs(float(v_ce) - float(v_kl)) > 1e-2


def test_alpha_zero_is_plain_cross_entropy():
    zs, zt = logits(50, (5, 7)), logits(51, (5, 7))
    y = labels_for(52, (5,), 7)
    y[3] = -100
    mask = np.array([1, 1, 0, 1, 1], np.float32)
    got = kd_loss(zs, zt, y, distance="kl", alpha=0.0, tau_t=2.0, tau_s=1.0, mask=mask)
    w = mask * (y >= 0)
    nll = np.array([-np_log_softmax(zs[i].astype(np.float64))[max(y[i], 0)] for i in range(5)])
    np.testing.assert_allclose(got, (w * nll).sum() / w.sum(), RTOL, ATOL)
    assert float(got) == float(label_loss(zs, y, mask=mask))
    # Without a teacher when alpha is exactly 0.
    assert float(kd_loss(zs, None, y, distance="kl", alpha=0, tau_t=1.0, tau_s=1.0)) == float(
        label_loss(zs, y)
    )
    # A traced alpha of 0 follows the same formula.
    traced = jax.jit(
        lambda a: kd_loss(zs, zt, y, distance="kl", alpha=a, tau_t=2.0, tau_s=1.0, mask=mask)
    )(jnp.float32(0.0))
    np.testing.assert_allclose(traced, got, RTOL, ATOL)


def test_alpha_one_ignores_labels():
    zs, zt = logits(60, (5, 7)), logits(61, (5, 7))
    kw = dict(distance="js", alpha=1.0, tau_t=2.0, tau_s=2.0)
    a = kd_loss(zs, zt, labels_for(62, (5,), 7), **kw)
    b = kd_loss(zs, zt, labels_for(63, (5,), 7), **kw)
    c = kd_loss(zs, zt, None, **kw)
    assert float(a) == float(b) == float(c)
    np.testing.assert_allclose(a, np_distances("js", zs, zt, 2.0, 2.0).mean(), RTOL, ATOL)


def test_label_loss_with_class_mask():
    zs = logits(65, (4, 6))
    cm = np.array([True, True, False, True, True, False])
    y = np.array([0, 3, 4, -100], np.int32)
    got = label_loss(zs, y, class_mask=cm)
    want = np_kd(zs, zs, y, "ce", 0.0, 1.0, 1.0, class_mask=cm)
    np.testing.assert_allclose(got, want, RTOL, ATOL)


@pytest.mark.parametrize("tau_t,tau_s", [(2.0, 1.0), (4.0, 4.0), (0.5, 2.0)])
def test_tau_squared_scales_kd_term(tau_t, tau_s):
    zs, zt = logits(70, (5, 7)), logits(71, (5, 7))
    y = labels_for(72, (5,), 7)
    kw = dict(distance="kl", tau_t=tau_t, tau_s=tau_s)
    plain = kd_loss(zs, zt, y, alpha=1.0, **kw)
    scaled = kd_loss(zs, zt, y, alpha=1.0, tau_squared=True, **kw)
    np.testing.assert_allclose(scaled, plain * tau_s * tau_t, rtol=1e-6)
    mixed = kd_loss(zs, zt, y, alpha=0.25, tau_squared=True, **kw)
    ce = label_loss(zs, y)
    np.testing.assert_allclose(mixed, 0.75 * ce + 0.25 * tau_s * tau_t * plain, RTOL, ATOL)


def test_bfloat16_inputs_computed_in_float32():
    zs = jnp.asarray(logits(80, (6, 5))).astype(jnp.bfloat16)
    zt = jnp.asarray(logits(81, (6, 5))).astype(jnp.bfloat16)
    y = labels_for(82, (6,), 5)
    kw = dict(distance="kl", alpha=0.5, tau_t=2.0, tau_s=1.0)
    got = kd_loss(zs, zt, y, **kw)
    assert got.dtype == jnp.float32
    zs32, zt32 = np.asarray(zs.astype(jnp.float32)), np.asarray(zt.astype(jnp.float32))
    np.testing.assert_allclose(got, np_kd(zs32, zt32, y, "kl", 0.5, 2.0, 1.0), RTOL, ATOL)
    np.testing.assert_allclose(got, kd_loss(zs32, zt32, y, **kw), rtol=1e-6)
    assert label_loss(zs, y).dtype == jnp.float32


def test_jit_and_vmap_over_hyperparameters():
    zs, zt = jnp.asarray(logits(90, (4, 6))), jnp.asarray(logits(91, (4, 6)))
    y = labels_for(92, (4,), 6)
    alphas = np.array([0.0, 0.3, 1.0], np.float32)
    taus_t = np.array([1.0, 2.0, 4.0], np.float32)
    taus_s = np.array([1.0, 1.0, 4.0], np.float32)

    def member(a, tt, ts):
        return kd_loss(zs, zt, y, distance="kl", alpha=a, tau_t=tt, tau_s=ts, tau_squared=True)

    got = jax.jit(jax.vmap(member))(alphas, taus_t, taus_s)
    want = [
        np_kd(np.asarray(zs), np.asarray(zt), y, "kl", a, tt, ts, tau_sq=True)
        for a, tt, ts in zip(alphas.tolist(), taus_t.tolist(), taus_s.tolist(), strict=True)
    ]
    np.testing.assert_allclose(got, want, RTOL, ATOL)
    grads = jax.jit(jax.vmap(jax.grad(member)))(alphas, taus_t, taus_s)
    assert np.isfinite(np.asarray(grads)).all()


@pytest.mark.parametrize("name", BUILTIN)
def test_fully_masked_batch_is_zero_with_finite_gradients(name):
    zs, zt = jnp.asarray(logits(100, (3, 4, 5))), jnp.asarray(logits(101, (3, 4, 5)))
    y = labels_for(102, (3, 4), 5)
    mask = jnp.zeros((3, 4))

    def loss(z):
        return kd_loss(z, zt, y, distance=name, alpha=0.5, tau_t=2.0, tau_s=2.0, mask=mask)

    value, grad = jax.jit(jax.value_and_grad(loss))(zs)
    assert float(value) == 0.0
    assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.parametrize("name", BUILTIN)
def test_masked_classes_give_no_nan(name):
    B, C = 4, 6
    cm = np.array([[True] * 4 + [False] * 2] * 3 + [[False] * C], bool)  # last row: no classes
    zs = np.where(cm, logits(110, (B, C)), -np.inf).astype(np.float32)
    zt = np.where(cm, logits(111, (B, C)), -np.inf).astype(np.float32)
    y = np.array([0, 3, 1, -100], np.int32)
    mask = np.array([1, 1, 1, 0], np.float32)

    def loss(z):
        return kd_loss(
            z, zt, y, distance=name, alpha=0.5, tau_t=0.5, tau_s=3.0, mask=mask, class_mask=cm
        )

    value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(zs))
    want = np_kd(zs[:3], zt[:3], y[:3], name, 0.5, 0.5, 3.0, class_mask=cm[:3])
    np.testing.assert_allclose(value, want, RTOL, ATOL)
    grad = np.asarray(grad)
    assert np.isfinite(grad).all()
    assert (grad[~cm] == 0).all()


# ---------------------------------------------------------------- validation and registry


def _kd(**overrides):
    z = logits(120, (2, 3))
    kw = dict(distance="kl", alpha=0.5, tau_t=1.0, tau_s=1.0)
    kw.update(overrides)
    return kd_loss(z, z, np.zeros(2, np.int32), **kw)


@pytest.mark.parametrize(
    "overrides,fragments",
    [
        (dict(distance="foo"), ["distance", "'foo'", ", ".join(BUILTIN)]),
        (dict(alpha=-0.1), ["alpha", "[0, 1]", "-0.1"]),
        (dict(alpha=1.5), ["alpha", "[0, 1]", "1.5"]),
        (dict(tau_t=0), ["tau_t", "> 0", "got 0"]),
        (dict(tau_s=-1), ["tau_s", "> 0", "got -1"]),
    ],
)
def test_invalid_arguments_raise(overrides, fragments):
    with pytest.raises(ValueError) as err:
        _kd(**overrides)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_get_distance_lists_allowed_names():
    with pytest.raises(ValueError, match="distance: unknown value 'nope'; allowed: ") as err:
        get_distance("nope")
    assert ", ".join(sorted(DISTANCES)) in str(err.value)
    assert set(BUILTIN) <= set(DISTANCES)


def test_shape_mismatch_raises():
    z = logits(121, (2, 3))
    with pytest.raises(ValueError, match="labels"):
        kd_loss(z, z, np.zeros(3, np.int32), distance="kl", alpha=0.5, tau_t=1.0, tau_s=1.0)
    with pytest.raises(ValueError, match="mask"):
        label_loss(z, np.zeros(2, np.int32), mask=np.ones(3))


def test_register_custom_distance():
    name = "test_l1_probs"
    try:

        @register(name)
        def l1(z_s, z_t, *, tau_s, tau_t, class_mask):
            p_s = jnp.exp(masked_log_softmax(z_s / tau_s, class_mask))
            p_t = jnp.exp(masked_log_softmax(z_t / tau_t, class_mask))
            return jnp.sum(jnp.abs(p_s - p_t), axis=-1)

        assert get_distance(name) is l1
        zs, zt = logits(130, (5, 7)), logits(131, (5, 7))
        y = labels_for(132, (5,), 7)
        by_name = kd_loss(zs, zt, y, distance=name, alpha=1.0, tau_t=2.0, tau_s=2.0)
        # A custom L1 is twice the built-in total variation.
        tvd = kd_loss(zs, zt, y, distance="tvd", alpha=1.0, tau_t=2.0, tau_s=2.0)
        np.testing.assert_allclose(by_name, 2 * tvd, RTOL, ATOL)
        by_callable = kd_loss(zs, zt, y, distance=l1, alpha=1.0, tau_t=2.0, tau_s=2.0)
        assert float(by_callable) == float(by_name)

        with pytest.raises(ValueError, match="already registered"):
            register(name)(l1)
        with pytest.raises(ValueError, match="already registered"):
            register("kl")(l1)
        register(name, override=True)(l1)
    finally:
        DISTANCES.pop(name, None)
    assert get_distance("kl") is not None
