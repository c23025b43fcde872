"""Registry of knowledge-distillation distances between student and teacher logits.

Every distance has the signature ``fn(z_s, z_t, *, tau_s, tau_t, class_mask) -> values`` where
``z_s`` and ``z_t`` are float32 logits ``[..., C]``, ``tau_s``/``tau_t`` are positive scalars
(Python floats or traced JAX scalars) and ``class_mask`` is a bool array broadcastable to
``[..., C]`` (or ``None`` for "all classes exist"). It returns one value per distribution,
shape ``[...]``. Masked classes get zero probability and contribute exactly nothing, to the
value and to the gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Distance = Callable[..., jax.Array]

DISTANCES: dict[str, Distance] = {}

# Finite stand-in for -inf: exp() underflows to exactly 0, yet differences and products with 0
# stay finite, so neither values nor gradients can turn into NaN.
NEG_LOGIT = float(jnp.finfo(jnp.float32).min) / 2


def register(name: str, *, override: bool = False) -> Callable[[Distance], Distance]:
    """Decorator registering ``fn`` as a distance usable by name in ``kd_loss``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: must be a non-empty string, got {name!r}")

    def decorator(fn: Distance) -> Distance:
        if name in DISTANCES and not override:
            raise ValueError(
                f"name: distance {name!r} is already registered; pass override=True to replace it"
            )
        DISTANCES[name] = fn
        return fn

    return decorator


def get_distance(name: str) -> Distance:
    """Look up a registered distance by name."""
    if not isinstance(name, str) or name not in DISTANCES:
        allowed = ", ".join(sorted(DISTANCES))
        raise ValueError(
            f"distance: unknown value {name!r}; allowed: {allowed} "
            "(or register your own with kdjax.losses.register)"
        )
    return DISTANCES[name]


def masked_log_softmax(z: jax.Array, class_mask: jax.Array | None = None) -> jax.Array:
    """log_softmax over the last axis, giving masked classes (``class_mask`` False) probability 0.

    Masked entries get a large negative finite log-probability, never -inf, and receive zero
    gradient. A row with every class masked yields finite (meaningless) values; weight it out.
    """
    if class_mask is not None:
        z = jnp.where(class_mask, z, NEG_LOGIT)
    return jax.nn.log_softmax(z, axis=-1)


def _masked_sum(terms: jax.Array, class_mask: jax.Array | None) -> jax.Array:
    # where() rather than multiplication: masked terms are exactly 0 and their gradient is 0.
    if class_mask is not None:
        terms = jnp.where(class_mask, terms, 0.0)
    return jnp.sum(terms, axis=-1)


def _log_probs(
    z_s: jax.Array, z_t: jax.Array, tau_s, tau_t, class_mask: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    # Scale before masking so a small tau cannot push the masked fill value to -inf.
    return (
        masked_log_softmax(z_s / tau_s, class_mask),
        masked_log_softmax(z_t / tau_t, class_mask),
    )


@register("ce")
def soft_cross_entropy(z_s, z_t, *, tau_s, tau_t, class_mask=None) -> jax.Array:
    """Soft cross-entropy: -sum_c p_t log p_s."""
    logp_s, logp_t = _log_probs(z_s, z_t, tau_s, tau_t, class_mask)
    return -_masked_sum(jnp.exp(logp_t) * logp_s, class_mask)


@register("kl")
def kl_divergence(z_s, z_t, *, tau_s, tau_t, class_mask=None) -> jax.Array:
    """Forward KL: KL(p_t || p_s) = sum_c p_t (log p_t - log p_s)."""
    logp_s, logp_t = _log_probs(z_s, z_t, tau_s, tau_t, class_mask)
    return _masked_sum(jnp.exp(logp_t) * (logp_t - logp_s), class_mask)


@register("reverse_kl")
def reverse_kl_divergence(z_s, z_t, *, tau_s, tau_t, class_mask=None) -> jax.Array:
    """Reverse KL: KL(p_s || p_t) = sum_c p_s (log p_s - log p_t)."""
    logp_s, logp_t = _log_probs(z_s, z_t, tau_s, tau_t, class_mask)
    return _masked_sum(jnp.exp(logp_s) * (logp_s - logp_t), class_mask)


@register("js")
def jensen_shannon(z_s, z_t, *, tau_s, tau_t, class_mask=None) -> jax.Array:
    """Jensen-Shannon: 0.5 KL(p_t || m) + 0.5 KL(p_s || m), m = (p_t + p_s) / 2."""
    logp_s, logp_t = _log_probs(z_s, z_t, tau_s, tau_t, class_mask)
    # log m in log space: m itself can underflow to 0 where both probabilities are tiny.
    logm = jnp.logaddexp(logp_s, logp_t) - jnp.log(2.0)
    terms = jnp.exp(logp_t) * (logp_t - logm) + jnp.exp(logp_s) * (logp_s - logm)
    return 0.5 * _masked_sum(terms, class_mask)


@register("tvd")
def total_variation(z_s, z_t, *, tau_s, tau_t, class_mask=None) -> jax.Array:
    """Total variation: 0.5 sum_c |p_t - p_s|."""
    logp_s, logp_t = _log_probs(z_s, z_t, tau_s, tau_t, class_mask)
    return 0.5 * _masked_sum(jnp.abs(jnp.exp(logp_t) - jnp.exp(logp_s)), class_mask)


@register("mse")
def mean_squared_error(z_s, z_t, *, tau_s, tau_t, class_mask=None) -> jax.Array:
    """Logit MSE: mean over unmasked c of (z_s / tau_s - z_t / tau_t)^2."""
    if class_mask is None:
        return jnp.mean(jnp.square(z_s / tau_s - z_t / tau_t), axis=-1)
    # Zero masked logits first so -inf/NaN padding values cannot leak into the gradient.
    diff = jnp.where(class_mask, z_s, 0.0) / tau_s - jnp.where(class_mask, z_t, 0.0) / tau_t
    count = jnp.sum(jnp.broadcast_to(class_mask, diff.shape), axis=-1)
    return _masked_sum(jnp.square(diff), class_mask) / jnp.maximum(count, 1)


@register("cosine")
def cosine_distance(z_s, z_t, *, tau_s, tau_t, class_mask=None) -> jax.Array:
    """Cosine distance on probabilities: 1 - <p_s, p_t> / (|p_s| |p_t|) (temperatures matter)."""
    logp_s, logp_t = _log_probs(z_s, z_t, tau_s, tau_t, class_mask)
    p_s, p_t = jnp.exp(logp_s), jnp.exp(logp_t)
    tiny = jnp.finfo(jnp.float32).tiny
    # Clamp the squared norm (not the norm) so sqrt never sees 0 and its gradient stays finite.
    norm_s = jnp.sqrt(jnp.maximum(_masked_sum(p_s * p_s, class_mask), tiny))
    norm_t = jnp.sqrt(jnp.maximum(_masked_sum(p_t * p_t, class_mask), tiny))
    return 1.0 - _masked_sum(p_s * p_t, class_mask) / (norm_s * norm_t)
