"""Ways to build a student: pretrained, a subset of a teacher's layers, or random of any size."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import jax
from flax import nnx

from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import Model, create
from kdjax.models.hf import base_entries, from_pretrained


def from_teacher_layers(
    source: str | Path | Model,
    task: str,
    layers: Sequence[int],
    num_labels: int | None = None,
    *,
    labels: Sequence[str] | None = None,
    seed: int = 0,
    sharding: jax.sharding.Sharding | None = None,
) -> Model:
    """A student whose embeddings and layers are copies of `layers` of `source`.

    `source` is a checkpoint directory or a loaded model. The head is freshly initialised.
    E.g. `layers=[0, 2, 4]` of a 6-layer teacher gives a 3-layer student.
    """
    if isinstance(source, Model):
        teacher = source
    else:
        teacher = from_pretrained(
            source, task, num_labels, labels=labels, reinit_head=True, sharding=sharding
        )
    layers = list(layers)
    n = teacher.cfg.num_layers
    if not layers or any(not 0 <= i < n for i in layers) or len(set(layers)) != len(layers):
        raise ValueError(
            f"layers: must be distinct indices in [0, {n}) of the {n}-layer source, got {layers}"
        )
    cfg = dataclasses.replace(teacher.cfg, num_layers=len(layers))
    num_labels = num_labels or teacher.num_labels
    labels = (
        labels
        if labels is not None
        else (teacher.labels if num_labels == teacher.num_labels else None)
    )
    student = create(
        lambda: Model(cfg, task, num_labels, labels=labels, rngs=nnx.Rngs(seed)), sharding
    )
    src = {k: p for k, p, _ in base_entries(teacher)}
    for key, param, _ in base_entries(student):
        if key.startswith("encoder.layer."):
            i = int(key.split(".")[2])
            key = key.replace(f"encoder.layer.{i}.", f"encoder.layer.{layers[i]}.", 1)
        param[...] = src[key][...]
    return student


def random_student(
    task: str,
    num_labels: int | None = None,
    *,
    layers: int,
    hidden: int,
    heads: int,
    intermediate: int,
    base: EncoderConfig | None = None,
    labels: Sequence[str] | None = None,
    seed: int = 0,
    sharding: jax.sharding.Sharding | None = None,
) -> Model:
    """A randomly initialised student of the given size; vocabulary and the rest from `base`."""
    cfg = dataclasses.replace(
        base or EncoderConfig(),
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        intermediate_size=intermediate,
        embedding_size=None,
    )
    return create(
        lambda: Model(cfg, task, num_labels, labels=labels, rngs=nnx.Rngs(seed)), sharding
    )
