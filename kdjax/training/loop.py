"""The one trainer: fine-tuning (no teacher) and distillation (a teacher, online) alike.

Phases, top to bottom: outputs → mesh → tokenizer, teacher and data (all checked before any
compute) → student → optimizer and step → epochs (train, validate, keep the best) → test.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import yaml
from flax import nnx
from tqdm.auto import tqdm

import kdjax
from kdjax.config import ModelInit, RunConfig
from kdjax.data.dataset import Dataset, build_dataset
from kdjax.data.sources import resolve_checkpoint
from kdjax.models import from_pretrained, from_teacher_layers, random_student, save_pretrained
from kdjax.models.config import EncoderConfig
from kdjax.tasks import get_task
from kdjax.training.batching import epoch_batches, take
from kdjax.training.evaluate import predict_logits
from kdjax.training.mesh import data_sharded, make_mesh, put_batch, replicated
from kdjax.training.step import init_state, make_optimizer, make_predict, make_train_step, objective

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def versions() -> dict[str, str]:
    import flax
    import optax
    import transformers

    return {
        "kdjax": kdjax.__version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax": ocp.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "backend": jax.default_backend(),
    }


def teacher_dir(teacher: str) -> Path:
    """A finetune output directory (its exported `model/`) or a checkpoint directory/name."""
    path = Path(teacher)
    if not path.exists() and (os.sep in teacher or teacher.startswith(".")):
        raise FileNotFoundError(
            f"teacher: {path} does not exist; fine-tune the teacher first (`kdjax finetune`)"
        )
    if (path / "model" / "config.json").is_file():
        return path / "model"
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"teacher: {path} holds no finished model (no model/config.json); run "
            f"`kdjax finetune` for it first, or point to a checkpoint directory"
        )
    return resolve_checkpoint(teacher)


def tokenizer_source(init: ModelInit) -> Path:
    return resolve_checkpoint(init.tokenizer if init.init == "random" else init.path)


def build_student(init: ModelInit, task: str, labels, seed: int, sharding):
    labels = list(labels) or None  # extractive QA has no label names
    if init.init == "pretrained":
        return from_pretrained(
            resolve_checkpoint(init.path),
            task,
            labels=labels,
            seed=seed,
            reinit_head=True,
            sharding=sharding,
        )
    if init.init == "teacher_layers":
        return from_teacher_layers(
            resolve_checkpoint(init.path),
            task,
            init.layers,
            labels=labels,
            seed=seed,
            sharding=sharding,
        )
    base = EncoderConfig.from_hf(json.loads((tokenizer_source(init) / "config.json").read_text()))
    return random_student(
        task,
        base=base,
        layers=init.layers,
        hidden=init.hidden,
        heads=init.heads,
        intermediate=init.intermediate,
        labels=labels,
        seed=seed,
        sharding=sharding,
    )


def _check_teacher(path: Path, cfg: RunConfig, ds: Dataset, tokenizer) -> None:
    """Fail before compute when the teacher cannot teach this student on this data."""
    hf = json.loads((path / "config.json").read_text())
    names = [hf.get("id2label", {}).get(str(i)) for i in range(len(hf.get("id2label", {})))]
    if cfg.task != "extractive_qa" and names != list(ds.labels):
        raise ValueError(
            f"teacher: {path} was trained with labels {names}, but this run's label set is "
            f"{list(ds.labels)}; they must match in order (set data.labels)"
        )
    if hf["vocab_size"] < len(tokenizer):
        raise ValueError(
            f"teacher: vocabulary of {hf['vocab_size']} tokens is smaller than the student's "
            f"tokenizer ({len(tokenizer)}); teacher and student must share a tokenization"
        )


class _Outputs:
    """The run directory: resolved config, metrics JSONL, checkpoints, exported model, result."""

    def __init__(self, cfg: RunConfig):
        self.dir = Path(cfg.output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
        self.metrics = (self.dir / "metrics.jsonl").open("w")
        ckpt = self.dir / "checkpoints"
        shutil.rmtree(ckpt, ignore_errors=True)  # a rerun starts over (resume comes with teachers)
        options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
        self.ckpt = ocp.CheckpointManager(ckpt.absolute(), options=options)

    def log(self, **row: Any) -> None:
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()

    def close(self, result: dict) -> None:
        self.ckpt.wait_until_finished()
        self.ckpt.close()
        self.metrics.close()
        (self.dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")


def train(cfg: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run one fine-tuning or distillation run; returns (and writes) its result."""
    start = time.time()
    tc = cfg.train
    kd = cfg.kd if cfg.teacher else None

    # Everything that can be wrong with the inputs is checked here, before any training.
    from transformers import AutoTokenizer

    mesh = make_mesh(cfg.mesh)
    rep = replicated(mesh)
    t_dir = teacher_dir(cfg.teacher) if cfg.teacher else None
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source(cfg.model)))
    task = get_task(cfg.task)
    ds = build_dataset(cfg.data, tokenizer, cfg.task, seed=cfg.data.split.seed)
    if t_dir is not None:
        _check_teacher(t_dir, cfg, ds, tokenizer)
    out = _Outputs(cfg)
    log.info("data: %s", ds.info)

    student = build_student(cfg.model, cfg.task, ds.labels, tc.seed, rep)
    graphdef, params = nnx.split(student)
    teacher_graphdef = teacher_params = None
    if t_dir is not None:
        teacher = from_pretrained(t_dir, cfg.task, labels=list(ds.labels) or None, sharding=rep)
        teacher_graphdef, teacher_params = nnx.split(teacher)

    train_split = ds.splits["train"]
    steps_per_epoch = math.ceil(len(train_split) / tc.batch_size)
    total = steps_per_epoch * tc.epochs
    tx, schedule = make_optimizer(tc, total)
    state = init_state(params, tx, rep)
    # The teacher joins the step only when its logits enter the loss (alpha > 0).
    online = teacher_graphdef if kd is not None and kd.alpha > 0 else None
    step_fn = make_train_step(
        graphdef,
        tx,
        objective(cfg.task, kd),
        teacher_graphdef=online,
        state_sharding=rep,
        batch_sharding=data_sharded(mesh),
    )
    predict = make_predict(graphdef)
    teacher_eval = {}
    if teacher_graphdef is not None:
        t_predict = make_predict(teacher_graphdef)
        for split in ("validation", "test"):
            teacher_eval[split] = predict_logits(
                t_predict,
                teacher_params,
                ds.splits[split],
                mesh,
                tc.eval_batch_size,
                tc.group_by_length,
            )

    def evaluate(params, split: str) -> dict[str, float]:
        enc = ds.splits[split]
        logits = predict_logits(predict, params, enc, mesh, tc.eval_batch_size, tc.group_by_length)
        return task.evaluate(logits, enc, ds.labels, teacher_eval.get(split))

    key = jax.random.key(tc.seed)
    rng = np.random.default_rng(tc.seed)
    arrays = train_split.arrays
    best: tuple[float, float] | None = None
    best_epoch, history = 0, []
    bar = tqdm(total=total, desc=f"train {out.dir.name}", disable=not progress, unit="step")
    train_start = time.time()
    lengths = arrays["attention_mask"].sum(1)
    for epoch in range(1, tc.epochs + 1):
        batches = epoch_batches(lengths, tc.batch_size, rng, tc.group_by_length)
        for i, idx in enumerate(batches):
            batch = put_batch(take(arrays, idx, tc.group_by_length), mesh, tc.batch_size)
            state, metrics = step_fn(state, teacher_params, batch, key)
            step = epoch_step = (epoch - 1) * steps_per_epoch + i + 1
            if step % tc.log_every == 0 or i == steps_per_epoch - 1:
                m = jax.device_get(metrics)  # the only host sync in the loop
                if not np.isfinite(m["loss"]):
                    raise TrainingDiverged(
                        f"loss became {m['loss']} at step {step} (epoch {epoch}); lower "
                        "train.learning_rate or check the data and kd settings"
                    )
                out.log(
                    event="train",
                    step=step,
                    epoch=epoch,
                    loss=float(m["loss"]),
                    grad_norm=float(m["grad_norm"]),
                    lr=float(schedule(step - 1)),
                )
                bar.set_postfix(loss=f"{float(m['loss']):.4f}", epoch=epoch)
            bar.update(1)
        val = evaluate(state.params, "validation")
        out.log(event="eval", split="validation", epoch=epoch, step=epoch_step, **val)
        history.append({"epoch": epoch, **val})
        bar.write(f"epoch {epoch}: " + ", ".join(f"validation {k} {v:.4f}" for k, v in val.items()))
        score = (val[task.metric], -val["loss"])
        if best is None or score > best:
            best, best_epoch = score, epoch
            out.ckpt.save(epoch, args=ocp.args.StandardSave(nnx.to_pure_dict(state.params)))
    bar.close()
    train_time = time.time() - train_start

    # Test the validation-best epoch, restored from its checkpoint.
    out.ckpt.wait_until_finished()
    target = nnx.to_pure_dict(state.params)
    restored = out.ckpt.restore(best_epoch, args=ocp.args.StandardRestore(target))
    nnx.replace_by_pure_dict(state.params, restored)
    best_params = state.params
    result = {
        "kind": "distill" if cfg.teacher else "finetune",
        "task": cfg.task,
        "metric": task.metric,
        "best_epoch": best_epoch,
        "validation": evaluate(best_params, "validation"),
        "test": evaluate(best_params, "test"),
        "history": history,
        "data": ds.info,
        "labels": list(ds.labels),
        "teacher": str(t_dir) if t_dir else None,
        "kd": kd.model_dump() if kd else None,
        "steps": total,
        "train_time_s": round(train_time, 2),
        "wall_time_s": None,
        "devices": mesh.shape["data"],
        "versions": versions(),
    }
    final = nnx.merge(graphdef, best_params)
    save_pretrained(final, out.dir / "model", tokenizer=tokenizer)
    result["wall_time_s"] = round(time.time() - start, 2)
    out.close(result)
    return result
