"""Grouped training: K distillation runs that share data, student and shapes in one compiled step.

The K student states are stacked on a leading axis and trained with `jax.vmap` over (state,
hyperparameters): one data batch, one copy of the cached teacher logits, one compile. Each
member keeps what the one trainer (`loop.train`) gives a run: its own optimizer state,
validation, hs/ll checkpoints, test of its hs epoch, diagnostics, export and `result.json`.

Grouping rules (`group_key`): members share everything but `kd.distance`, `kd.alpha`,
`kd.tau_t`, `kd.tau_s`, `train.learning_rate`, `teacher_checkpoint` and `output_dir`. That
includes `train.seed`: it fixes the batch order, the student's initialisation and the dropout
keys, so seeds form separate groups. Only cached-teacher distillation groups (an online
teacher or a fine-tuning run trains alone). Per member, inside the compiled step, the distance
is picked with `jax.lax.switch` (under vmap every distance of the group is computed and the
member's own is selected, so values are exact), the teacher checkpoint by an index into logits
stacked as [rows, checkpoints, ...], and the learning rate enters `make_optimizer` as a traced
number, so each member does the solo run's arithmetic.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from kdjax.config import RunConfig
from kdjax.data.cache import cache_root
from kdjax.data.dataset import build_dataset
from kdjax.data.sources import resolve_checkpoint
from kdjax.distributed import is_main
from kdjax.losses import kd_loss
from kdjax.losses.distances import get_distance
from kdjax.models.config import EncoderConfig
from kdjax.tasks import get_task
from kdjax.training import loop
from kdjax.training.batching import epoch_batches, prefetch, take
from kdjax.training.diagnostics import diagnostics
from kdjax.training.evaluate import predict_logits
from kdjax.training.mesh import data_sharded, make_mesh, param_sharding, put_batch
from kdjax.training.run_dir import RunDir
from kdjax.training.step import TrainState, _forward, init_state, make_optimizer, make_predict
from kdjax.training.teacher import teacher_logits, teacher_paths

log = logging.getLogger(__name__)

PER_MEMBER_KD = ("distance", "alpha", "tau_t", "tau_s")


def groupable(cfg: RunConfig) -> bool:
    return cfg.teacher is not None and cfg.kd is not None and cfg.teacher_mode == "cached"


def group_key(cfg: RunConfig) -> tuple:
    """What runs must share to train together; an ungroupable run gets a key of its own."""
    if not groupable(cfg):
        return ("solo", cfg.output_dir)
    d = cfg.model_dump(mode="json")
    del d["teacher_checkpoint"], d["output_dir"], d["train"]["learning_rate"]
    d["kd"] = {k: v for k, v in d["kd"].items() if k not in PER_MEMBER_KD}
    return ("group", json.dumps(d, sort_keys=True))


def max_group_size(cfg: RunConfig, memory_budget_bytes: int, cap: int = 16) -> int:
    """How many members of `cfg`'s shape fit in `memory_budget_bytes` (at least 1, at most
    `cap`). Per member: params, grads, two Adam moments and an updates temporary (5 float32
    copies), plus the activations a backward pass keeps (per token and layer about
    10·hidden + 2·intermediate floats, and 3·heads·seq for the attention maps)."""
    m = cfg.model
    src = loop.tokenizer_source(m) if m.init == "random" else resolve_checkpoint(m.path)
    e = EncoderConfig.from_hf(json.loads((src / "config.json").read_text()))
    if m.init == "random":
        e = dataclasses.replace(e, num_layers=m.layers, hidden_size=m.hidden, num_heads=m.heads,
                                intermediate_size=m.intermediate, embedding_size=None)  # fmt: skip
    elif m.init == "teacher_layers":
        e = dataclasses.replace(e, num_layers=len(m.layers))
    n, h, i = e.num_layers, e.hidden_size, e.intermediate_size
    params = (e.vocab_size + e.max_position_embeddings + e.type_vocab_size + 2) * e.emb_size
    params += n * (4 * h * h + 2 * h * i + 10 * h + i) + h * (h + 2 + len(cfg.data.labels or ()))
    seq = cfg.data.max_length
    acts = cfg.train.batch_size * seq * n * (10 * h + 2 * i + 3 * e.num_heads * seq)
    return int(max(1, min(cap, memory_budget_bytes // (4 * (5 * params + acts)))))


def _check_group(cfgs: list[RunConfig]) -> None:
    bad = [c.output_dir for c in cfgs if not groupable(c)]
    if bad:
        raise ValueError(f"only cached-teacher distillation runs can be grouped, not {bad}")
    key = group_key(cfgs[0])
    for c in cfgs[1:]:
        if group_key(c) != key:
            a, b = json.loads(key[1]), json.loads(group_key(c)[1])
            raise ValueError(
                f"{c.output_dir} differs from {cfgs[0].output_dir} in "
                f"{sorted(k for k in a if a[k] != b[k])}; group members may differ only in "
                f"kd.{{{', '.join(PER_MEMBER_KD)}}}, train.learning_rate and teacher_checkpoint"
            )
    if len({c.output_dir for c in cfgs}) != len(cfgs):
        raise ValueError(f"group members need distinct output_dirs: {[c.output_dir for c in cfgs]}")


def _member_loss(task_name: str, tau_squared: bool, distances: list[str]):
    """loss(student_logits, teacher_logits, batch, hp) of one member: `step.objective` with
    the distance `distances[hp["distance"]]`."""
    task, fns = get_task(task_name), [get_distance(n) for n in distances]

    def loss(student_logits, t_logits, batch, hp):
        logits, labels, mask, class_mask = task.loss_inputs(student_logits, batch)
        t_logits = task.loss_inputs(t_logits, batch)[0]

        def distance(z_s, z_t, *, tau_s, tau_t, class_mask):
            fn = lambda f: lambda a, b, m: f(a, b, tau_s=tau_s, tau_t=tau_t, class_mask=m)
            if len(fns) == 1:
                return fn(fns[0])(z_s, z_t, class_mask)
            return jax.lax.switch(hp["distance"], [fn(f) for f in fns], z_s, z_t, class_mask)

        hps = {k: hp[k] for k in ("alpha", "tau_t", "tau_s")}
        return kd_loss(logits, t_logits, labels, distance=distance, tau_squared=tau_squared,
                       mask=mask, class_mask=class_mask, **hps)  # fmt: skip

    return loss


def make_group_step(graphdef, tc, total_steps: int, loss_fn, state_sharding, batch_sharding):
    """A jitted `step(states, health, batch, key, hp) -> (states, health, metrics)`, vmapped
    over members (the leading axis of `states`, `health` and every `hp` entry). A member whose
    loss or gradient stops being finite is frozen from then on; `health` keeps the step it
    failed at (`failed_at`, 0 while it trains) and that loss."""

    def member(state: TrainState, health, batch, key, hp):
        key = jax.random.fold_in(key, state.step)
        t_logits = jnp.take(batch["teacher_logits"], hp["teacher"], axis=1)
        t_logits = jax.lax.stop_gradient(t_logits.astype(jnp.float32))

        def compute(params):
            dtype = jnp.dtype(tc.compute_dtype)
            logits = _forward(graphdef, params, batch, dropout_key=key, dtype=dtype)
            return loss_fn(logits.astype(jnp.float32), t_logits, batch, hp)

        loss, grads = jax.value_and_grad(compute)(state.params)
        # The solo run's optimizer; only its peak learning rate is a traced number.
        tx = make_optimizer(tc.model_copy(update={"learning_rate": hp["lr"]}), total_steps)[0]
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new = TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1)
        grad_norm = optax.tree.norm(grads)
        alive = health["failed_at"] == 0
        ok = alive & jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
        now = alive & ~ok
        health = {
            "failed_at": jnp.where(now, state.step + 1, health["failed_at"]),
            "loss": jnp.where(now, loss, health["loss"]),
        }
        return new, health, {"loss": loss, "grad_norm": grad_norm}

    # Every placement fixed: an input placed unlike the last call's output would recompile.
    rep = NamedSharding(batch_sharding.mesh, P())
    return jax.jit(
        jax.vmap(member, in_axes=(0, 0, None, None, 0)),
        donate_argnums=0,
        in_shardings=(state_sharding, rep, batch_sharding, rep, rep),
        out_shardings=(state_sharding, rep, rep),
    )


def _stack(trees: list, shardings):
    stack = lambda *xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)
    return jax.jit(stack, out_shardings=shardings)(*trees)


@jax.jit
def _member(states, k):
    """Member `k` of stacked states, in one compiled gather (not one per array shape)."""
    return jax.tree.map(lambda x: x[k], states)


def _close(run: RunDir) -> None:
    """Release a member's checkpoint managers and log without writing a result."""
    for mngr in run.managers.values():
        mngr.wait_until_finished()
        mngr.close()
    if run.metrics is not None:
        run.metrics.close()


def _teacher_rows(logits: list[np.ndarray], idx: np.ndarray, seq: int) -> np.ndarray:
    """Rows `idx` of each checkpoint's logits, stacked [rows, checkpoints, ...]; per-token
    logits ([rows, checkpoints, seq, C]) are cut to the batch's (length-trimmed) `seq`."""
    out = np.stack([np.asarray(z[idx]) for z in logits], axis=1)
    return out[:, :, :seq] if out.ndim == 4 else out


def train_group(cfgs: list[RunConfig], *, progress: bool = True) -> list[dict[str, Any]]:
    """Train `cfgs` (one `group_key`) together; one result per run, in order: what `train`
    returns, plus `group: {size, index, train_time_s, wall_time_s}` (the group's totals; a
    member's own `train_time_s` and `wall_time_s` are its 1/K share). A member whose loss stops
    being finite is frozen and returned as `{"failed": True, "error": ...}`, without a
    result.json (as a solo run that raises); the others go on. An interrupted group resumes
    after its last finished epoch (it starts over if its members stopped at different ones)."""
    cfgs = list(cfgs)
    _check_group(cfgs)
    from kdjax.models.tokenizer import load_tokenizer

    start, size, cfg0, tc = time.time(), len(cfgs), cfgs[0], cfgs[0].train

    # 1. Inputs, shared by the members, checked before any training.
    mesh = make_mesh(cfg0.mesh)
    rep = param_sharding(mesh)
    ckpts = sorted({c.teacher_checkpoint for c in cfgs})
    t_model_dir = [teacher_paths(cfg0.teacher, c)[0] for c in ckpts][0]
    tokenizer = load_tokenizer(loop.tokenizer_source(cfg0.model))
    task = get_task(cfg0.task)
    ds = build_dataset(cfg0.data, tokenizer, cfg0.task, seed=cfg0.data.split.seed,
                       cache_dir=cache_root(cfg0.cache_dir, cfg0.output_dir))  # fmt: skip
    loop._check_teacher(t_model_dir, cfg0, ds, tokenizer)
    runs = [RunDir(c.output_dir, c.model_dump(mode="json")) for c in cfgs]

    # 2. One student initialisation (the seed is shared) and each teacher checkpoint's logits.
    student = loop.build_student(cfg0.model, cfg0.task, ds.labels, tc.seed, rep)
    graphdef, params = nnx.split(student)
    by_ckpt = {c.teacher_checkpoint: c for c in cfgs}
    t_logits = {
        c: teacher_logits(by_ckpt[c], ds.labels, ds, tokenizer, mesh, tc.eval_batch_size, rep)[0]
        for c in ckpts
    }

    # 3. Stacked states, per-member numbers and the compiled group step.
    arrays = dict(ds.splits["train"].arrays)
    steps_per_epoch = math.ceil(len(ds.splits["train"]) / tc.batch_size)
    total = steps_per_epoch * tc.epochs
    schedules = [make_optimizer(c.train, total)[1] for c in cfgs]
    # Adam's state does not depend on the learning rate: one init serves every member.
    state = init_state(params, make_optimizer(tc, total)[0], rep)
    sharding = jax.tree.map(lambda x: NamedSharding(mesh, P(None, *x.sharding.spec)), state)
    states = _stack([state] * size, sharding)
    distances = sorted({c.kd.distance for c in cfgs})
    f32 = lambda get: np.asarray([get(c) for c in cfgs], np.float32)
    hp = {
        "alpha": f32(lambda c: c.kd.alpha),
        "tau_t": f32(lambda c: c.kd.tau_t),
        "tau_s": f32(lambda c: c.kd.student_tau),
        "lr": f32(lambda c: c.train.learning_rate),
        "distance": np.asarray([distances.index(c.kd.distance) for c in cfgs], np.int32),
        "teacher": np.asarray([ckpts.index(c.teacher_checkpoint) for c in cfgs], np.int32),
    }
    loss_fn = _member_loss(cfg0.task, cfg0.kd.tau_squared, distances)
    step_fn = make_group_step(graphdef, tc, total, loss_fn, sharding, data_sharded(mesh))
    predict = make_predict(graphdef, jnp.dtype(tc.compute_dtype))

    def evaluate(params, split: str, ckpt: str, diagnose: bool = False) -> dict[str, Any]:
        enc, teacher = ds.splits[split], t_logits[ckpt].get(split)
        logits = predict_logits(predict, params, enc, mesh, tc.eval_batch_size, tc.group_by_length)
        metrics = task.evaluate(logits, enc, ds.labels, teacher)
        if diagnose:
            metrics["diagnostics"] = diagnostics(task, logits, teacher, enc)
            metrics["outcomes"] = task.outcomes(logits, enc, ds.labels)
        return metrics

    # 4. Resume after the members' last finished epoch when they all reached the same one.
    hosts = [{"epoch": 0, "history": [], "hs": None, "ll": None} for _ in cfgs]
    resumed = [run.resume(_member(states, k)) for k, run in enumerate(runs)]
    epochs = {r and r[1]["epoch"] for r in resumed}
    if len(epochs) == 1 and None not in epochs:
        states, hosts = _stack([r[0] for r in resumed], sharding), [r[1] for r in resumed]
        log.info("group of %d: resuming after epoch %d", size, hosts[0]["epoch"])
    elif epochs != {None}:
        log.warning("group members stopped after different epochs %s; starting over", epochs)
        for run in runs:
            _close(run)
            shutil.rmtree(run.dir / "checkpoints", ignore_errors=True)
        runs = [RunDir(c.output_dir, c.model_dump(mode="json")) for c in cfgs]
    first = hosts[0]["epoch"] + 1

    # 5. Epochs: one step trains every member; each validates and keeps its own checkpoints.
    health = {"failed_at": np.zeros(size, np.int32), "loss": np.zeros(size, np.float32)}
    # Placed once where the step wants them (and returns `health`): no per-step transfers.
    replicated = NamedSharding(mesh, P())
    key, hp, health = jax.device_put((jax.random.key(tc.seed), hp, health), replicated)
    failed: dict[int, str] = {}
    lengths = arrays["attention_mask"].sum(1)
    train_logits = [t_logits[c]["train"] for c in ckpts]
    bar = tqdm(total=total, initial=(first - 1) * steps_per_epoch, unit="step",
               disable=not (progress and is_main()), desc=f"train group of {size}")  # fmt: skip
    train_start = time.time()
    for epoch in range(first, tc.epochs + 1):
        rng = np.random.default_rng([tc.seed, epoch])  # the solo runs' batch order
        order = epoch_batches(lengths, tc.batch_size, rng, tc.group_by_length)

        def placed(order=order):
            for idx in order:
                rows = take(arrays, idx, tc.group_by_length)
                seq = rows["input_ids"].shape[1]
                rows["teacher_logits"] = _teacher_rows(train_logits, idx, seq)
                yield put_batch(rows, mesh, tc.batch_size)

        for i, batch in enumerate(prefetch(placed())):  # next batches placed while this runs
            states, health, metrics = step_fn(states, health, batch, key, hp)
            step = (epoch - 1) * steps_per_epoch + i + 1
            if step % tc.log_every == 0 or i == steps_per_epoch - 1:
                m, h = jax.device_get((metrics, health))  # the only host sync in the loop
                for k in range(size):
                    at = int(h["failed_at"][k])
                    if at and k not in failed:
                        failed[k] = (
                            f"loss became {h['loss'][k]} at step {at} (epoch "
                            f"{(at - 1) // steps_per_epoch + 1}); lower train.learning_rate or "
                            "check the data and kd settings"
                        )
                        log.warning("%s: %s", runs[k].dir, failed[k])
                    elif not at:
                        runs[k].log(event="train", step=step, epoch=epoch,
                                    loss=float(m["loss"][k]), grad_norm=float(m["grad_norm"][k]),
                                    lr=float(schedules[k](step - 1)))  # fmt: skip
                bar.set_postfix(epoch=epoch, failed=len(failed))
            bar.update(1)
        for k in (k for k in range(size) if k not in failed):
            member, host, run = _member(states, k), hosts[k], runs[k]
            val = evaluate(member.params, "validation", cfgs[k].teacher_checkpoint)
            run.log(event="eval", split="validation", epoch=epoch, step=step, **val)
            run.end_epoch(epoch, val, task.metric, member, host)
    bar.close()
    train_time = time.time() - train_start

    # 6. Each member tests its own validation-best (hs) epoch and exports it.
    results: list[dict[str, Any]] = []
    for k, (cfg, run, host) in enumerate(zip(cfgs, runs, hosts, strict=True)):
        if k in failed:
            _close(run)
            error = f"TrainingDiverged: {failed[k]}"
            results.append({"failed": True, "error": error, "output_dir": cfg.output_dir})
            continue
        result = loop.finish(
            cfg, run, host, _member(states, k).params, graphdef, tokenizer, ds,
            test=lambda p, c=cfg: evaluate(p, "test", c.teacher_checkpoint, diagnose=True),
            steps=total, resumed_after=(first - 1) or None, devices=mesh.shape["data"],
            train_time_s=train_time / size,
        )  # fmt: skip
        results.append(result)
    wall = time.time() - start
    for k, (run, result) in enumerate(zip(runs, results, strict=True)):
        result["group"] = {"size": size, "index": k, "train_time_s": round(train_time, 2),
                           "wall_time_s": round(wall, 2)}  # fmt: skip
        if k not in failed:
            result["wall_time_s"] = round(wall / size, 2)
            run.close(result)
    return results
