"""The canonical train step and the prediction function, both pure and jit-compiled."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from kdjax.config import KDConfig, RunConfig, TrainConfig
from kdjax.losses import kd_loss, label_loss
from kdjax.tasks import get_task
from kdjax.training.mesh import data_sharded


class TrainState(NamedTuple):
    params: Any  # nnx.State of the student
    opt_state: Any
    step: jax.Array


def make_optimizer(cfg: TrainConfig, total_steps: int):
    """AdamW with linear warmup then linear decay to 0; no weight decay on biases and norms.
    Returns the optax transformation and its learning-rate schedule."""
    warmup = int(cfg.warmup_ratio * total_steps)
    schedule = optax.join_schedules(
        [
            optax.linear_schedule(0.0, cfg.learning_rate, max(warmup, 1)),
            optax.linear_schedule(cfg.learning_rate, 0.0, max(total_steps - warmup, 1)),
        ],
        [warmup],
    )
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    adamw = optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.max_grad_norm is None:
        return adamw, schedule
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw), schedule


def kd_hparams(kd: KDConfig | None) -> dict[str, jax.Array] | None:
    """The KD numbers as step inputs (not constants baked into the program), so that runs that
    differ only in alpha or temperatures share one compiled step."""
    if kd is None or kd.alpha == 0:
        return None
    f = lambda v: jnp.asarray(v, jnp.float32)
    return {"alpha": f(kd.alpha), "tau_t": f(kd.tau_t), "tau_s": f(kd.student_tau)}


def objective(task: str, kd: KDConfig | None):
    """loss(student_logits, teacher_logits, batch, hp) for `task`; padding rows have weight 0.
    `hp` (from `kd_hparams`) carries alpha and the temperatures; the distance and tau_squared
    are part of the program."""
    t = get_task(task)

    def loss(student_logits, teacher_logits, batch, hp=None):
        logits, labels, mask, class_mask = t.loss_inputs(student_logits, batch)
        if kd is None or kd.alpha == 0:
            return label_loss(logits, labels, mask=mask, class_mask=class_mask)
        hp = hp or {"alpha": kd.alpha, "tau_t": kd.tau_t, "tau_s": kd.student_tau}
        t_logits = t.loss_inputs(teacher_logits, batch)[0]
        return kd_loss(
            logits,
            t_logits,
            labels,
            distance=kd.distance,
            alpha=hp["alpha"],
            tau_t=hp["tau_t"],
            tau_s=hp["tau_s"],
            tau_squared=kd.tau_squared,
            mask=mask,
            class_mask=class_mask,
        )

    return loss


def _cast(params, dtype):
    """Floating params in `dtype` for the forward pass (the float32 master copy is untouched)."""
    if dtype is None or dtype == jnp.float32:
        return params
    return jax.tree.map(
        lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params
    )


def _forward(graphdef, params, batch, dropout_key=None, dtype=None):
    model = nnx.merge(graphdef, _cast(params, dtype))
    return model(
        batch["input_ids"],
        batch["attention_mask"],
        batch["token_type_ids"],
        dropout_key=dropout_key,
    )


def make_train_step(
    graphdef,
    tx: optax.GradientTransformation,
    loss_fn,
    *,
    teacher_graphdef=None,
    state_sharding=None,
    teacher_sharding=None,
    batch_sharding=None,
    compute_dtype=None,
):
    """A jitted `step(state, teacher_params, batch, key, hp) -> (state, metrics)`; `hp` is
    `kd_hparams(kd)` (None without KD).

    The teacher's logits come from `batch["teacher_logits"]` (cached) or, with
    `teacher_graphdef`, from the teacher run in eval mode inside the step (online); either way
    outside the optimizer, behind `stop_gradient`. `state` is donated; metrics stay on device
    until the caller fetches them.
    """

    def step(state: TrainState, teacher_params, batch, key, hp):
        key = jax.random.fold_in(key, state.step)
        teacher_logits = batch.get("teacher_logits")  # cached logits travel with the batch
        if teacher_graphdef is not None:
            teacher_logits = _forward(teacher_graphdef, teacher_params, batch)
        if teacher_logits is not None:
            teacher_logits = jax.lax.stop_gradient(teacher_logits.astype(jnp.float32))

        def compute(params):
            logits = _forward(graphdef, params, batch, dropout_key=key, dtype=compute_dtype)
            return loss_fn(logits.astype(jnp.float32), teacher_logits, batch, hp)

        loss, grads = jax.value_and_grad(compute)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return TrainState(params, opt_state, state.step + 1), metrics

    in_shardings = out_shardings = None
    if state_sharding is not None:
        in_shardings = (state_sharding, teacher_sharding, batch_sharding, None, None)
        out_shardings = (state_sharding, None)
    return jax.jit(step, donate_argnums=0, in_shardings=in_shardings, out_shardings=out_shardings)


def make_run_step(cfg: RunConfig, graphdef, tx, kd, state, mesh, teacher_graphdef=None,
                  teacher_params=None):  # fmt: skip
    """The train step of run `cfg` with KD settings `kd` (None: labels only), placed like
    `state` and `teacher_params` (real or abstract arrays) on `mesh`: the one program that
    `train` runs and `kdjax compile-check` compiles."""
    return make_train_step(
        graphdef,
        tx,
        objective(cfg.task, kd),
        teacher_graphdef=teacher_graphdef,
        state_sharding=jax.tree.map(lambda x: x.sharding, state),
        teacher_sharding=jax.tree.map(lambda x: x.sharding, teacher_params),
        batch_sharding=data_sharded(mesh),
        compute_dtype=jnp.dtype(cfg.train.compute_dtype),
    )


def make_predict(graphdef, compute_dtype=None):
    """A jitted `predict(params, batch) -> float32 logits` in eval mode (no dropout)."""
    return jax.jit(
        lambda params, batch: _forward(graphdef, params, batch, dtype=compute_dtype).astype(
            jnp.float32
        )
    )


def init_state(params, tx: optax.GradientTransformation, sharding=None) -> TrainState:
    """Optimizer state created directly in `sharding` (a Sharding or a per-array rule, as for
    the params, which are already placed)."""
    fn = lambda p: TrainState(p, tx.init(p), jnp.zeros((), jnp.int32))
    out = None
    if sharding is not None:
        rule = sharding if callable(sharding) else lambda _: sharding
        out = jax.tree.map(rule, jax.eval_shape(fn, params))
    return jax.jit(fn, out_shardings=out)(params)
