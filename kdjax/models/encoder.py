"""A Flax NNX BERT-family encoder with classification, token-classification and span heads.

Module and attribute names follow the Hugging Face layout closely so that `hf.py` can map
checkpoint keys one to one. Dropout takes an explicit key (`dropout_key`), not an `nnx.Rngs`
inside the model: the forward pass is then a pure function of (params, inputs, key), which
`jax.grad`, `jax.vmap` and sharding can all treat as ordinary JAX code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from kdjax.models.config import EncoderConfig, check_task

_ACT = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


# `jax.nn.dot_product_attention`'s implementation: None lets JAX choose (XLA today; cuDNN's
# fused kernel can be forced with "cudnn" on a GPU for the shapes and dtypes it supports).
ATTENTION: str | None = None

# Encoders at least this deep run their layers as one scanned layer over stacked params: the
# 24-layer teacher's forward pass compiled 4x faster on CPU (27 s -> 7 s,
# benchmarks/scan_compile.py), and it is compiled once per length bucket. Shallower encoders
# (the students, MiniLM) stay unrolled, which lets XLA optimise across layers.
SCAN_MIN_LAYERS = 12


@contextlib.contextmanager
def layers_unrolled():
    """Within it, programs traced run every encoder's layers unrolled. XLA's cost analysis of a
    partitioned program counts a scanned layer's FLOPs once, not once per layer, so FLOP
    counts (compile-check, MFU) are taken from a lowering of the unrolled program."""
    global SCAN_MIN_LAYERS
    saved, SCAN_MIN_LAYERS = SCAN_MIN_LAYERS, 1 << 30
    try:
        yield
    finally:
        SCAN_MIN_LAYERS = saved


class DropoutKeys:
    """Hands out a fresh key per dropout site; `None` key means deterministic (eval) mode.

    The keep masks are drawn by hashing each element's index with two 32-bit words taken
    from the site's key (MurmurHash3's 32-bit finaliser, applied twice): a counter-based
    generator that XLA fuses into the surrounding elementwise loop. On CPU, drawing the masks
    with `jax.random.bernoulli` (threefry, or rbg) cost 7-9x more than this and took a large
    share of a small student's train step (`benchmarks/step_throughput.py`). Being a function
    of the global index, a mask is the same however its array is sharded or vmapped.
    """

    def __init__(self, key: jax.Array | None):
        self.key = key
        self.count = 0

    def for_layer(self, index: jax.Array | int) -> DropoutKeys:
        """The sites of scanned layer `index` (traced): their own key, counted from 0."""
        key = None if self.key is None else jax.random.fold_in(self.key, (1 << 20) + index)
        return DropoutKeys(key)

    def active(self, rate: float) -> bool:
        return self.key is not None and rate > 0.0

    def __call__(self, x: jax.Array, rate: float) -> jax.Array:
        if not self.active(rate):
            return x
        self.count += 1
        seed = jax.random.bits(jax.random.fold_in(self.key, self.count), (2,), jnp.uint32)
        keep = keep_mask(seed, x.shape, rate)
        return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _fmix32(h: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finaliser: a bijection on uint32 with full avalanche."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


def keep_mask(seed: jax.Array, shape: tuple[int, ...], rate: float) -> jax.Array:
    """Bool mask of `shape`, each element kept with probability 1 - rate (to 2**-32), from a
    2-word uint32 `seed`. Element i's value is a hash of (i, seed): no state, no sequence."""
    index = jnp.zeros(shape, jnp.uint32)
    for axis, n in enumerate(shape):  # row-major position, built per axis so it shards
        index = index * jnp.uint32(n) + jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
    h = _fmix32(_fmix32(index * jnp.uint32(0x9E3779B9) ^ seed[0]) + seed[1])
    return h >= jnp.uint32(min(round(rate * 2**32), 2**32 - 1))


def _linear(cfg: EncoderConfig, din: int, dout: int, rngs: nnx.Rngs) -> nnx.Linear:
    init = nnx.initializers.normal(cfg.initializer_range)
    return nnx.Linear(din, dout, kernel_init=init, rngs=rngs)


def _norm(cfg: EncoderConfig, dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(dim, epsilon=cfg.layer_norm_eps, rngs=rngs)


class Embeddings(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        init = nnx.initializers.normal(cfg.initializer_range)
        e = cfg.emb_size
        self.word_embeddings = nnx.Embed(cfg.vocab_size, e, embedding_init=init, rngs=rngs)
        self.position_embeddings = nnx.Embed(
            cfg.max_position_embeddings, e, embedding_init=init, rngs=rngs
        )
        self.token_type_embeddings = nnx.Embed(
            cfg.type_vocab_size, e, embedding_init=init, rngs=rngs
        )
        self.layer_norm = _norm(cfg, e, rngs)
        project = _linear(cfg, e, cfg.hidden_size, rngs) if cfg.embedding_size else None
        self.project = nnx.data(project)
        self.cfg = cfg

    def __call__(self, input_ids, token_type_ids, drop: DropoutKeys) -> jax.Array:
        cfg = self.cfg
        if cfg.model_type == "roberta":
            # RoBERTa: positions count only real tokens and start after the padding index.
            real = (input_ids != cfg.pad_token_id).astype(jnp.int32)
            positions = jnp.cumsum(real, axis=1) * real + cfg.pad_token_id
        else:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_type_ids)
        )
        x = drop(self.layer_norm(x), cfg.hidden_dropout)
        if self.project is not None:
            x = self.project(x)
        return x


class Layer(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.query = _linear(cfg, h, h, rngs)
        self.key = _linear(cfg, h, h, rngs)
        self.value = _linear(cfg, h, h, rngs)
        self.attn_out = _linear(cfg, h, h, rngs)
        self.attn_norm = _norm(cfg, h, rngs)
        self.intermediate = _linear(cfg, h, cfg.intermediate_size, rngs)
        self.output = _linear(cfg, cfg.intermediate_size, h, rngs)
        self.output_norm = _norm(cfg, h, rngs)
        self.cfg = cfg

    def __call__(
        self, x: jax.Array, mask: jax.Array, drop: DropoutKeys, rows: int | None = None
    ) -> jax.Array:
        """x: [batch, seq, hidden]; mask: [batch, 1, 1, seq] bool, True for real key tokens.
        `rows`: compute the output of the first `rows` positions only (they still attend to
        every position); [batch, rows, hidden] out."""
        cfg = self.cfg
        b, s, h = x.shape
        nh = cfg.num_heads
        heads = lambda t: t.reshape(b, t.shape[1], nh, h // nh)  # [b, s, h] -> [b, s, nh, hd]
        xq = x if rows is None else x[:, :rows]
        q, k, v = heads(self.query(xq)), heads(self.key(x)), heads(self.value(x))
        if drop.active(cfg.attention_dropout):
            ctx = _attention_with_dropout(q, k, v, mask, drop, cfg.attention_dropout)
        else:
            ctx = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=ATTENTION)
        ctx = ctx.reshape(b, xq.shape[1], h)
        x = self.attn_norm(xq + drop(self.attn_out(ctx), cfg.hidden_dropout))
        y = self.output(_ACT[cfg.hidden_act](self.intermediate(x)))
        return self.output_norm(x + drop(y, cfg.hidden_dropout))


def _attention_with_dropout(q, k, v, mask, drop: DropoutKeys, rate: float) -> jax.Array:
    """softmax(q k^T / sqrt(d) + mask) with dropout on the probabilities, then times v, as
    BERT trains (`jax.nn.dot_product_attention` has no dropout). [b, s, nh, hd] in and out."""
    scale = jnp.sqrt(jnp.float32(q.shape[-1])).astype(q.dtype)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / scale
    bias = jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    probs = jax.nn.softmax(scores.astype(jnp.float32) + bias, axis=-1).astype(q.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", drop(probs, rate), v)


class Encoder(nnx.Module):
    """The transformer body: embeddings and layers, returning the last hidden state."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.embeddings = Embeddings(cfg, rngs)
        self.layers = nnx.List([Layer(cfg, rngs) for _ in range(cfg.num_layers)])
        self.cfg = cfg

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, drop=None, rows=None):
        """The last hidden state, [batch, seq, hidden]; with `rows`, the last layer computes
        only the first `rows` positions ([batch, rows, hidden]): a sequence classifier reads
        one position, and the last layer's other positions are then work thrown away (its
        attention, projections and feed-forward block at [CLS] only: 5/6 of a layer saved)."""
        drop = drop or DropoutKeys(None)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids, drop)
        mask = attention_mask[:, None, None, :] > 0  # [batch, 1, 1, seq]: which keys to attend
        layers = list(self.layers)
        if len(layers) >= SCAN_MIN_LAYERS:
            if rows is None:
                return _scan_layers(layers, x, mask, drop)
            x = _scan_layers(layers[:-1], x, mask, drop)
            return layers[-1](x, mask, drop.for_layer(len(layers) - 1), rows)
        for i, layer in enumerate(layers):
            x = layer(x, mask, drop, rows if i == len(layers) - 1 else None)
        return x


def _scan_layers(layers: list[Layer], x: jax.Array, mask: jax.Array, drop: DropoutKeys):
    """The layers as one `jax.lax.scan` over their stacked params: one layer to compile.
    Each layer draws its dropout masks from its own key (the layer index folded in)."""
    graphdef = nnx.split(layers[0])[0]
    stacked = jax.tree.map(lambda *p: jnp.stack(p), *[nnx.split(layer)[1] for layer in layers])

    def body(x, xs):
        index, params = xs
        return nnx.merge(graphdef, params)(x, mask, drop.for_layer(index)), None

    return jax.lax.scan(body, x, (jnp.arange(len(layers)), stacked))[0]


class Model(nnx.Module):
    """An encoder with one task head. Calling it returns logits:
    classification `[batch, labels]`, token_classification `[batch, seq, labels]`,
    extractive_qa `[batch, seq, 2]` (start, end)."""

    def __init__(
        self,
        cfg: EncoderConfig,
        task: str,
        num_labels: int | None = None,
        *,
        labels: Sequence[str] | None = None,
        rngs: nnx.Rngs,
    ):
        check_task(task)
        if task == "extractive_qa":
            num_labels = 2
        if num_labels is None:
            num_labels = len(labels) if labels else None
        if not num_labels or num_labels < 1:
            raise ValueError(f"num_labels: required for task {task!r} and must be >= 1")
        if labels is not None and len(labels) != num_labels:
            raise ValueError(f"labels: {len(labels)} names given for num_labels={num_labels}")
        self.cfg = cfg
        self.task = task
        self.num_labels = num_labels
        self.labels = tuple(labels) if labels else tuple(f"LABEL_{i}" for i in range(num_labels))
        h = cfg.hidden_size
        self.encoder = Encoder(cfg, rngs)
        pooler = head_dense = None
        if task == "classification" and cfg.model_type == "bert":
            pooler = _linear(cfg, h, h, rngs)
        elif task == "classification":
            # RoBERTa and ELECTRA classify through a two-layer head on the first token.
            head_dense = _linear(cfg, h, h, rngs)
        self.pooler = nnx.data(pooler)
        self.head_dense = nnx.data(head_dense)
        self.head = _linear(cfg, h, num_labels, rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        drop = DropoutKeys(dropout_key)
        rows = 1 if self.task == "classification" else None  # the head reads [CLS] only
        x = self.encoder(input_ids, attention_mask, token_type_ids, drop=drop, rows=rows)
        cfg = self.cfg
        rate = cfg.hidden_dropout if cfg.classifier_dropout is None else cfg.classifier_dropout
        if self.task == "classification":
            x = x[:, 0]
            if self.pooler is not None:
                x = jnp.tanh(self.pooler(x))
            else:
                act = jnp.tanh if cfg.model_type == "roberta" else _ACT["gelu"]
                x = act(self.head_dense(drop(x, rate)))
            return self.head(drop(x, rate))
        if self.task == "token_classification":
            return self.head(drop(x, rate))
        return self.head(x)  # extractive_qa: transformers applies no dropout before qa_outputs


def create(build, sharding=None) -> Model:
    """Initialise the model that `build()` constructs, with its params created directly in
    `sharding` (a Sharding, or a function from an abstract param to its Sharding): compiled
    initialisation, nothing materialised on one device first."""
    graphdef, abstract = nnx.split(nnx.eval_shape(build))
    out = None
    if sharding is not None:
        out = jax.tree.map(sharding if callable(sharding) else lambda _: sharding, abstract)
    state = jax.jit(lambda: nnx.split(build())[1], out_shardings=out)()
    return nnx.merge(graphdef, state)
