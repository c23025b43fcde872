"""The teacher of a distillation run: where it is, which checkpoint, and its logits.

The teacher is fixed and in eval mode, so its logits are a deterministic function of (teacher
params, tokenised rows). In `cached` mode they are computed once per split and stored raw
(float32, temperature-free) by `LogitCache`, keyed by the teacher's parameter hash and the
content hash of each split's tokenised rows (`Dataset.rows_sha256`), and shared by every run
and student size that needs them. A data file changed in place, even to the same rows in
another order, is other content and gets its own entry; on every read the entry's row counts
and sequence length are checked against the dataset as well.

In a multi-process (`jax.distributed`) run the processes compute a missing entry together
(one teacher pass), process 0 writes it, and every process memory-maps it (or, when the
cache directory is not shared, keeps the computed logits).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from kdjax.config import RunConfig
from kdjax.data.cache import tokenizer_id
from kdjax.data.sources import resolve_checkpoint
from kdjax.distributed import is_main, sync
from kdjax.models import from_pretrained
from kdjax.training.evaluate import predict_logits
from kdjax.training.logit_cache import CacheError, LogitCache
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


def cache_inputs(cfg: RunConfig, teacher_sha256: str, tokenizer, ds) -> dict:
    """Everything that determines the teacher's logits on this run's rows: its parameters, the
    task (the head's output layout) and each split's tokenised rows, by content."""
    return {
        "teacher_sha256": teacher_sha256,
        "task": cfg.task,
        "rows": {s: len(ds.splits[s]) for s in SPLITS},
        "rows_sha256": {s: ds.rows_sha256[s] for s in SPLITS},
        "tokenization": {
            **tokenizer_id(tokenizer),
            "seq_len": {s: ds.splits[s].seq_len for s in SPLITS},
        },
    }


def checked(logits: dict[str, np.ndarray], ds, where: Path) -> dict[str, np.ndarray]:
    """`logits` after checking that they line up with `ds`'s rows (count and sequence length);
    a mismatch is a CacheError, never training on another row's targets."""
    for s in SPLITS:
        enc, z = ds.splits[s], logits.get(s)
        ok = z is not None and len(z) == len(enc) and (z.ndim == 2 or z.shape[1] == enc.seq_len)
        if not ok:
            got = "none" if z is None else f"shape {list(z.shape)}"
            raise CacheError(
                f"teacher logit cache {where}: {s} logits ({got}) do not line up with the "
                f"{len(enc)} rows x {enc.seq_len} tokens of the data; delete the entry"
            )
    return logits


def _all_processes(flag: bool) -> bool:
    """Whether `flag` holds on every process (a collective in a multi-process run)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray(int(flag), np.int32))))


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
    cache = LogitCache(default_cache_dir(cfg))
    inputs = None
    never = lambda: {}  # only called for an entry that turned invalid; the result is refused
    if cfg.teacher_mode == "cached":
        digest = checkpoint_sha256(run, cfg.teacher_checkpoint) if run is not None else None
        if digest is not None:
            inputs = cache_inputs(cfg, digest, tokenizer, ds)
        valid = inputs is not None and cache.verify(inputs) is None
        if _all_processes(valid):  # every process agrees, so all or none call the teacher
            return checked(cache.get_or_build(inputs, never), ds, cache.path(inputs)), None
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
    if inputs is None:
        inputs = cache_inputs(cfg, params_sha256(params), tokenizer, ds)
    where = cache.path(inputs)
    if not multi:
        return checked(cache.get_or_build(inputs, build), ds, where), None
    if _all_processes(cache.verify(inputs) is None):
        return checked(cache.get_or_build(inputs, never), ds, where), None
    # One teacher pass, computed by all processes together; process 0 writes the entry and,
    # where the cache directory is shared, every process then maps it instead of holding a copy.
    logits = build()
    if is_main():
        cache.get_or_build(inputs, lambda: logits)
    sync("kdjax-teacher-logits")
    if cache.verify(inputs) is None:
        return checked(cache.get_or_build(inputs, never), ds, where), None
    return checked(logits, ds, where), None
