"""Knowledge-distillation objective: a mix of hard-label cross-entropy and a teacher distance.

Logits have shape ``[..., C]``; each leading index is one distribution (a sequence, a token, a
span boundary laid out as ``[batch, 2, seq]``, ...). ``mask`` weights distributions, ``class_mask``
removes classes (e.g. padding positions for extractive QA) and must broadcast to the logits
shape, so for ``[batch, 2, seq]`` logits pass ``[batch, 1, seq]``.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from kdjax.losses.distances import Distance, get_distance, masked_log_softmax

_TINY = float(jnp.finfo(jnp.float32).tiny)


def _is_number(x) -> bool:
    # Traced or array hyperparameters (e.g. vmapped per ensemble member) skip value checks.
    return isinstance(x, numbers.Real)


def _check_shapes(logits, labels, mask, class_mask) -> None:
    if logits.ndim < 1:
        raise ValueError(f"logits: must have a class axis, got shape {tuple(logits.shape)}")
    dist_shape = tuple(logits.shape[:-1])
    if labels is not None and tuple(jnp.shape(labels)) != dist_shape:
        raise ValueError(
            f"labels: expected shape {dist_shape} (logits without the class axis), "
            f"got {tuple(jnp.shape(labels))}"
        )
    if mask is not None and tuple(jnp.shape(mask)) != dist_shape:
        raise ValueError(
            f"mask: expected shape {dist_shape} (logits without the class axis), "
            f"got {tuple(jnp.shape(mask))}"
        )
    if class_mask is not None:
        try:
            jnp.broadcast_shapes(jnp.shape(class_mask), tuple(logits.shape))
        except ValueError:
            raise ValueError(
                f"class_mask: shape {tuple(jnp.shape(class_mask))} does not broadcast to "
                f"logits shape {tuple(logits.shape)}"
            ) from None


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    # The floor makes an all-zero weight vector give 0 instead of 0/0.
    return jnp.sum(weights * values) / jnp.maximum(jnp.sum(weights), _TINY)


def _distribution_weights(shape, mask) -> jax.Array:
    if mask is None:
        return jnp.ones(shape, jnp.float32)
    return jnp.asarray(mask).astype(jnp.float32)


def _label_loss(logits, labels, weights, class_mask) -> jax.Array:
    labels = jnp.asarray(labels).astype(jnp.int32)
    has_label = labels >= 0
    weights = weights * has_label.astype(jnp.float32)
    # Unlabelled positions (e.g. -100) gather class 0; their weight is 0 so the value is unused.
    safe = jnp.where(has_label, labels, 0)
    logp = masked_log_softmax(logits, class_mask)
    nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    return _weighted_mean(nll, weights)


def label_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    mask: jax.Array | None = None,
    class_mask: jax.Array | None = None,
) -> jax.Array:
    """Weighted mean hard-label cross-entropy (float32); labels < 0 are ignored."""
    logits = jnp.asarray(logits)
    _check_shapes(logits, labels, mask, class_mask)
    logits = logits.astype(jnp.float32)
    weights = _distribution_weights(logits.shape[:-1], mask)
    return _label_loss(logits, labels, weights, class_mask)


def kd_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array | None,
    labels: jax.Array | None,
    *,
    distance: str | Distance,
    alpha: float | jax.Array,
    tau_t: float | jax.Array,
    tau_s: float | jax.Array,
    tau_squared: bool = False,
    mask: jax.Array | None = None,
    class_mask: jax.Array | None = None,
) -> jax.Array:
    """KD loss ``(1 - alpha) * L_label + alpha * D`` as a float32 scalar.

    ``L_label`` is the weighted mean hard-label cross-entropy of the student at temperature 1
    (weights ``mask * (labels >= 0)``); ``D`` is the weighted mean (weights ``mask``) of
    ``distance`` between student and teacher at temperatures ``tau_s`` and ``tau_t``.
    ``tau_squared=True`` multiplies ``D`` by ``tau_s * tau_t``: Hinton's T^2 gradient rescaling
    generalised to independent temperatures (equal to T^2 when they match); it is never applied
    implicitly. The teacher is treated as a constant (``stop_gradient``). With a Python
    ``alpha`` of 0 the teacher term is skipped (``teacher_logits`` may be None); with 1 the label
    term is skipped (``labels`` may be None). Hyperparameters may be JAX scalars, in which case
    their ranges are not checked.
    """
    # Validate everything before tracing any computation.
    dist_fn = distance if callable(distance) else get_distance(distance)
    if _is_number(alpha) and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: must be in [0, 1], got {alpha}")
    for name, tau in (("tau_t", tau_t), ("tau_s", tau_s)):
        if _is_number(tau) and not tau > 0:
            raise ValueError(f"{name}: must be > 0, got {tau}")
    skip_kd = _is_number(alpha) and alpha == 0
    skip_label = _is_number(alpha) and alpha == 1
    if teacher_logits is None and not skip_kd:
        raise ValueError("teacher_logits: required unless alpha == 0")
    if labels is None and not skip_label:
        raise ValueError("labels: required unless alpha == 1")
    student_logits = jnp.asarray(student_logits)
    _check_shapes(student_logits, labels, mask, class_mask)
    if teacher_logits is not None and tuple(jnp.shape(teacher_logits)) != student_logits.shape:
        raise ValueError(
            f"teacher_logits: expected the student's shape {tuple(student_logits.shape)}, "
            f"got {tuple(jnp.shape(teacher_logits))}"
        )

    z_s = student_logits.astype(jnp.float32)
    weights = _distribution_weights(z_s.shape[:-1], mask)
    if class_mask is not None:
        class_mask = jnp.asarray(class_mask).astype(bool)

    l_label = None if skip_label else _label_loss(z_s, labels, weights, class_mask)
    if skip_kd:
        return l_label

    z_t = jax.lax.stop_gradient(jnp.asarray(teacher_logits).astype(jnp.float32))
    if class_mask is None:
        # Registered distances receive an array, so user code need not special-case None.
        class_mask = jnp.ones(z_s.shape[-1:], bool)
    per_dist = dist_fn(z_s, z_t, tau_s=tau_s, tau_t=tau_t, class_mask=class_mask)
    d = _weighted_mean(per_dist.astype(jnp.float32), weights)
    if tau_squared:
        d = d * (tau_s * tau_t)
    if skip_label:
        return d.astype(jnp.float32)
    return ((1.0 - alpha) * l_label + alpha * d).astype(jnp.float32)
