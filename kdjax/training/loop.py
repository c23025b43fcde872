"""The one trainer: fine-tuning (no teacher) and distillation (cached or online teacher) alike.

Phases, top to bottom: inputs (mesh, tokenizer, data, teacher; all checked before any
compute) → models → teacher logits → optimizer and step → resume → epochs (train, validate,
keep the hs/ll checkpoints) → test the validation-best epoch and export it.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

import kdjax
from kdjax.config import ModelInit, RunConfig
from kdjax.data.cache import cache_root
from kdjax.data.dataset import Dataset, build_dataset
from kdjax.data.sources import resolve_checkpoint
from kdjax.distributed import is_main
from kdjax.models import from_pretrained, from_teacher_layers, random_student, save_pretrained
from kdjax.models.config import EncoderConfig
from kdjax.models.hf import teacher_head_problem
from kdjax.tasks import get_task
from kdjax.training.batching import epoch_batches, prefetch, take
from kdjax.training.diagnostics import diagnostics
from kdjax.training.evaluate import predict_logits
from kdjax.training.mesh import (
    make_mesh,
    padded_size,
    param_sharding,
    put_batch,
)
from kdjax.training.run_dir import OUTCOMES_FILE, RunDir, restore_params
from kdjax.training.step import (
    init_state,
    kd_hparams,
    make_optimizer,
    make_predict,
    make_run_step,
)
from kdjax.training.teacher import params_sha256, teacher_logits, teacher_paths

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


def _check_teacher(model_dir: Path, cfg: RunConfig, ds: Dataset, tokenizer) -> None:
    """Fail before compute when the teacher cannot teach this student on this data."""
    hf = json.loads((model_dir / "config.json").read_text())
    problem = teacher_head_problem(hf, cfg.task)
    if problem:
        raise ValueError(f"teacher: {model_dir} {problem}")
    names = [hf.get("id2label", {}).get(str(i)) for i in range(len(hf.get("id2label", {})))]
    if cfg.task != "extractive_qa" and names != list(ds.labels):
        raise ValueError(
            f"teacher: {model_dir} was trained with labels {names}, but this run's label set is "
            f"{list(ds.labels)}; they must match in order (set data.labels)"
        )
    if hf["vocab_size"] < len(tokenizer):
        raise ValueError(
            f"teacher: vocabulary of {hf['vocab_size']} tokens is smaller than the student's "
            f"tokenizer ({len(tokenizer)}); teacher and student must share a tokenization"
        )


def train(cfg: RunConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run one fine-tuning or distillation run; returns (and writes) its result.

    A run killed mid-way resumes from its last finished epoch when started again with the same
    config and output directory."""
    start = time.time()
    tc = cfg.train
    kd = cfg.kd if cfg.teacher else None

    # 1. Inputs. Everything that can be wrong with them is checked before any training.
    from kdjax.models.tokenizer import load_tokenizer

    mesh = make_mesh(cfg.mesh)
    rep = param_sharding(mesh)  # replicated unless mesh.fsdp > 1
    rows = padded_size(tc.batch_size, mesh)
    log.info(
        "batch: global %d rows (%d real) = %d per host x %d hosts = %d per device x %d devices",
        rows,
        tc.batch_size,
        rows // jax.process_count(),
        jax.process_count(),
        rows // mesh.size,
        mesh.size,
    )
    if rows != tc.batch_size:
        log.warning(
            "train.batch_size %d is not a multiple of the %d devices; each batch is "
            "padded with %d weightless rows",
            tc.batch_size,
            mesh.size,
            rows - tc.batch_size,
        )
    t_model_dir = teacher_paths(cfg.teacher, cfg.teacher_checkpoint)[0] if cfg.teacher else None
    tokenizer = load_tokenizer(tokenizer_source(cfg.model))
    task = get_task(cfg.task)
    ds = build_dataset(cfg.data, tokenizer, cfg.task, seed=cfg.data.split.seed,
                       cache_dir=cache_root(cfg.cache_dir, cfg.output_dir))  # fmt: skip
    if t_model_dir is not None:
        _check_teacher(t_model_dir, cfg, ds, tokenizer)
    run = RunDir(cfg.output_dir, cfg.model_dump(mode="json"))
    log.info("data: %s", ds.info)

    # 2. Models: the student (params created in their sharding) and the fixed teacher.
    student = build_student(cfg.model, cfg.task, ds.labels, tc.seed, rep)
    graphdef, params = nnx.split(student)
    needs_logits = kd is not None and kd.alpha > 0
    t_logits, online, t_params = {}, None, None
    if cfg.teacher:
        t_logits, teacher = teacher_logits(
            cfg, ds.labels, ds, tokenizer, mesh, tc.eval_batch_size, rep
        )
        if needs_logits and cfg.teacher_mode == "online":
            online, t_params = nnx.split(teacher)
        del teacher

    # 3. Optimizer, state and the compiled step.
    arrays = dict(ds.splits["train"].arrays)
    cached = t_logits["train"] if needs_logits and online is None else None
    steps_per_epoch = math.ceil(len(ds.splits["train"]) / tc.batch_size)
    total = steps_per_epoch * tc.epochs
    tx, schedule = make_optimizer(tc, total)
    state = init_state(params, tx, rep)
    step_fn = make_run_step(cfg, graphdef, tx, kd, state, mesh, online, t_params)
    predict = make_predict(graphdef, jnp.dtype(tc.compute_dtype))
    hp = kd_hparams(kd)

    def evaluate(params, split: str, diagnose: bool = False) -> dict[str, float]:
        enc = ds.splits[split]
        logits = predict_logits(predict, params, enc, mesh, tc.eval_batch_size, tc.group_by_length)
        metrics = task.evaluate(logits, enc, ds.labels, t_logits.get(split))
        if diagnose:
            metrics["diagnostics"] = diagnostics(task, logits, t_logits.get(split), enc)
            metrics["outcomes"] = task.outcomes(logits, enc, ds.labels)
        return metrics

    # 4. Resume from the last finished epoch, if this run was interrupted.
    host = {"epoch": 0, "history": [], "hs": None, "ll": None}
    resumed = run.resume(state)
    if resumed is not None:
        state, host = resumed
        log.info("%s: resuming after epoch %d", run.dir, host["epoch"])
    resumed_after = host["epoch"] or None

    # 5. Epochs: train, validate, keep the hs and ll checkpoints and the full state.
    key = jax.random.key(tc.seed)
    lengths = arrays["attention_mask"].sum(1)
    progress = progress and is_main()
    bar = tqdm(
        total=total,
        initial=host["epoch"] * steps_per_epoch,
        disable=not progress,
        desc=f"train {run.dir.name}",
        unit="step",
    )
    train_start = time.time()
    for epoch in range(host["epoch"] + 1, tc.epochs + 1):
        rng = np.random.default_rng([tc.seed, epoch])  # per epoch: resumable, same order
        order = epoch_batches(lengths, tc.batch_size, rng, tc.group_by_length)

        def placed(order=order):
            for idx in order:
                rows = take(arrays, idx, tc.group_by_length)
                if cached is not None:  # per-token logits [rows, seq, C] follow the length trim
                    z = np.asarray(cached[idx])
                    seq = rows["input_ids"].shape[1]
                    rows["teacher_logits"] = z[:, :seq] if z.ndim == 3 else z
                yield put_batch(rows, mesh, tc.batch_size)

        # The next batches go to the device while this step runs (a background thread).
        for i, batch in enumerate(prefetch(placed())):
            state, metrics = step_fn(state, t_params, batch, key, hp)
            step = (epoch - 1) * steps_per_epoch + i + 1
            if step % tc.log_every == 0 or i == steps_per_epoch - 1:
                m = jax.device_get(metrics)  # the only host sync in the loop
                if not np.isfinite(m["loss"]):
                    raise TrainingDiverged(
                        f"loss became {m['loss']} at step {step} (epoch {epoch}); lower "
                        "train.learning_rate or check the data and kd settings"
                    )
                run.log(
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
        run.log(event="eval", split="validation", epoch=epoch, step=step, **val)
        if progress:
            summary = ", ".join(f"validation {k} {v:.4f}" for k, v in val.items())
            bar.write(f"epoch {epoch}: {summary}", file=sys.stderr)
        run.end_epoch(epoch, val, task.metric, state, host)
    bar.close()

    # 6. Test the validation-best (hs) epoch, restored from its checkpoint; export it.
    result = finish(
        cfg, run, host, state.params, graphdef, tokenizer, ds,
        test=lambda params: evaluate(params, "test", diagnose=True),
        steps=total, resumed_after=resumed_after, devices=mesh.shape["data"],
        train_time_s=time.time() - train_start,
    )  # fmt: skip
    result["wall_time_s"] = round(time.time() - start, 2)
    run.close(result)
    return result


def finish(cfg: RunConfig, run: RunDir, host: dict[str, Any], params, graphdef, tokenizer, ds,
           *, test: Callable[[Any], dict[str, Any]], steps: int, resumed_after: int | None,
           devices: int, train_time_s: float) -> dict[str, Any]:  # fmt: skip
    """A trained run's result: restores its ll then hs checkpoint into `params` (hs stays),
    records both, tests hs with `test(params)` (metrics plus `diagnostics` and per-example
    `outcomes`, kept as `test_outcomes` and in `test_outcomes.json`) and exports it."""
    checkpoints = {}
    for which in ("ll", "hs"):  # hs last: its params stay in `params` for the export
        restore_params(run.dir, which, params)
        checkpoints[which] = {
            "epoch": host[which]["epoch"],
            "validation": host["history"][host[which]["epoch"] - 1],
            # Recorded so that students can find their cached logits without loading us.
            "params_sha256": params_sha256(params),
        }
        run.write_text(f"checkpoints/{which}.sha256", checkpoints[which]["params_sha256"])
    kd = cfg.kd if cfg.teacher else None
    result = {
        "kind": "distill" if cfg.teacher else "finetune",
        "task": cfg.task,
        "metric": get_task(cfg.task).metric,
        "best_epoch": host["hs"]["epoch"],
        "validation": checkpoints["hs"]["validation"],  # the hs epoch's, same params
        "test": test(params),
        "checkpoints": checkpoints,
        "history": host["history"],
        "data": ds.info,
        "labels": list(ds.labels),
        "teacher": cfg.teacher,
        "teacher_checkpoint": cfg.teacher_checkpoint if cfg.teacher else None,
        "teacher_mode": cfg.teacher_mode if cfg.teacher else None,
        "kd": kd.model_dump() if kd else None,
        "steps": steps,
        "resumed_after_epoch": resumed_after,
        "train_time_s": round(train_time_s, 2),
        "wall_time_s": None,
        "devices": devices,
        "versions": versions(),
    }
    save_pretrained(nnx.merge(graphdef, params), run.dir / "model", tokenizer=tokenizer)
    result["diagnostics"] = result["test"].pop("diagnostics")
    # Per-example outcomes (correct or score per test example) for paired tests between runs.
    result["test_outcomes"] = result["test"].pop("outcomes")
    run.write_text(OUTCOMES_FILE, json.dumps(result["test_outcomes"], separators=(",", ":")))
    return result
