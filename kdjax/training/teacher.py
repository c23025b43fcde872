"""The teacher of a distillation run: where it is, which checkpoint, and its logits.

The teacher is fixed and in eval mode, so on a fixed tokenisation its logits are a
deterministic function of (teacher params, data, tokenisation). In `cached` mode they are
computed once per split and stored raw (float32, temperature-free) by `LogitCache`, keyed by
all of those, and shared by every run and student size that needs them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from kdjax.config import RunConfig
from kdjax.data.sources import resolve_checkpoint
from kdjax.models import from_pretrained
from kdjax.training.evaluate import predict_logits
from kdjax.training.logit_cache import LogitCache
from kdjax.training.run_dir import restore_params
from kdjax.training.step import make_predict

SPLITS = ("train", "validation", "test")


def teacher_paths(teacher: str, checkpoint: str) -> tuple[Path, Path | None]:
    """(HF model directory, teacher run directory or None) for a run dir or a checkpoint."""
    from kdjax.models.hub import looks_like_hub_id

    path = Path(teacher)
    if not path.exists() and not looks_like_hub_id(teacher):
        raise FileNotFoundError(
            f"teacher: {path} does not exist; fine-tune the teacher first (`kdjax finetune`)"
        )
    if not path.exists():  # a hub id: a fine-tuned checkpoint whose head matches the labels
        try:
            return resolve_checkpoint(teacher), None
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"teacher: {teacher} does not exist locally; fine-tune the teacher first "
                f"(`kdjax finetune`), or name a fine-tuned hub checkpoint ({e})"
            ) from None
    if (path / "checkpoints").is_dir() or (path / "config.yaml").is_file():
        if not (path / "model" / "config.json").is_file():
            raise FileNotFoundError(
                f"teacher: {path} holds no finished teacher run (no model/config.json); "
                "finish it with `kdjax finetune` first"
            )
        ckpt = path / "checkpoints" / checkpoint
        if not any(p.name.isdigit() for p in ckpt.glob("*")):
            raise FileNotFoundError(f"teacher: {path} has no {checkpoint!r} checkpoint ({ckpt})")
        return path / "model", path
    if checkpoint != "hs":
        raise ValueError(
            f"teacher_checkpoint: {checkpoint!r} needs a teacher run directory (with hs and ll "
            f"checkpoints); {teacher} is a plain checkpoint"
        )
    return resolve_checkpoint(teacher), None


def load_teacher(cfg: RunConfig, labels: tuple[str, ...], sharding):
    """The teacher model (eval use only) with the chosen checkpoint's params."""
    model_dir, run = teacher_paths(cfg.teacher, cfg.teacher_checkpoint)
    teacher = from_pretrained(model_dir, cfg.task, labels=list(labels) or None, sharding=sharding)
    if run is not None:
        graphdef, params = nnx.split(teacher)
        teacher = nnx.merge(graphdef, restore_params(run, cfg.teacher_checkpoint, params))
    return teacher


def params_sha256(params) -> str:
    """Content hash of a model's params (names, shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]
    for path, leaf in sorted(flat, key=lambda kv: jax.tree_util.keystr(kv[0])):
        value = np.asarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{value.shape}|{value.dtype}".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def _tokenizer_id(tokenizer) -> dict[str, Any]:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), separators=(",", ":"))
    return {
        "class": type(tokenizer).__name__,
        "vocab_sha256": hashlib.sha256(vocab.encode()).hexdigest(),
        "lowercase": getattr(tokenizer, "do_lower_case", None),
    }


def cache_inputs(cfg: RunConfig, teacher_sha256: str, tokenizer, ds) -> dict:
    """Everything that determines the teacher's logits on this run's rows."""
    data = cfg.data.model_dump(mode="json")
    seq_lens = {s: ds.splits[s].seq_len for s in SPLITS}
    return {
        "teacher_sha256": teacher_sha256,
        "task": cfg.task,
        "dataset": data,
        "tokenization": {**_tokenizer_id(tokenizer), "seq_len": seq_lens},
    }


def default_cache_dir(cfg: RunConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    _, run = teacher_paths(cfg.teacher, cfg.teacher_checkpoint)
    base = run if run is not None else Path(cfg.output_dir).parent
    return base / "logit_cache"


def checkpoint_sha256(run: Path, which: str) -> str | None:
    """The parameter hash a finished run recorded for its checkpoint `which`, if any."""
    path = Path(run) / "checkpoints" / f"{which}.sha256"
    return path.read_text().strip() if path.is_file() else None


def teacher_logits(cfg: RunConfig, labels, ds, tokenizer, mesh, batch_size: int, sharding):
    """({split: float32 logits [rows, ...]}, the teacher model or None).

    Cached mode: the logits of every split, memory-mapped from the cache (built on first use);
    when the teacher run recorded its checkpoint's parameter hash and the cache is valid, the
    teacher is not even loaded. Online mode: the teacher (for the train step) and its
    validation and test logits (for agreement)."""
    model_dir, run = teacher_paths(cfg.teacher, cfg.teacher_checkpoint)
    multi = jax.process_count() > 1
    cache = inputs = None
    if cfg.teacher_mode == "cached" and not multi:
        digest = checkpoint_sha256(run, cfg.teacher_checkpoint) if run is not None else None
        if digest is not None:
            cache = LogitCache(default_cache_dir(cfg))
            inputs = cache_inputs(cfg, digest, tokenizer, ds)
            if cache.verify(inputs) is None:
                return cache.get_or_build(inputs, lambda: {}), None
    teacher = load_teacher(cfg, labels, sharding)
    graphdef, params = nnx.split(teacher)
    predict = make_predict(graphdef)

    def build(splits=SPLITS) -> dict[str, np.ndarray]:
        # Untrimmed batches: the cache must not depend on how a run groups lengths.
        return {
            s: predict_logits(predict, params, ds.splits[s], mesh, batch_size, trim=False)
            for s in splits
        }

    if cfg.teacher_mode == "online":  # the step runs the teacher; evaluation needs these two
        return build(("validation", "test")), teacher
    if multi:
        # Several processes compute the logits together (one teacher pass per split): a cache
        # on one host's disk cannot be read by the others.
        return build(), None
    if inputs is None:
        cache = LogitCache(default_cache_dir(cfg))
        inputs = cache_inputs(cfg, params_sha256(params), tokenizer, ds)
    return cache.get_or_build(inputs, build), None
