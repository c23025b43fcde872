"""Wall time of one distillation with the online teacher vs cached teacher logits, in one process.

The same run three ways (same data, student, steps and seed): the teacher online in every train
step; cached, first use (the cache is built: one teacher pass over every split); cached, warm
(the cache exists, as for every later run of a study that shares the teacher). Whole-run times
include compiling, loading and evaluation; the steady-state seconds per train step (batch 32 x
32 tokens, compiled and warm, the two modes alternating) isolate what caching removes.

    python benchmarks/teacher_cache.py [--teacher DIR] [--train 1000] [--epochs 1]

The teacher defaults to the demo teacher run (runs/demo/teacher) when it exists, else
all-MiniLM-L6-v2 with a seeded fresh head (the same architecture and cost). The student is the
2-layer demo student (minilm-l2). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax


def _step_times(teacher: str, rounds: int, batch: int = 32, seq: int = 32, steps: int = 10):
    """Steady-state seconds per train step (compiled, warm), alternating the two modes."""
    import numpy as np
    from flax import nnx

    from kdjax.config import KDConfig, TrainConfig
    from kdjax.data.sources import minilm_dir
    from kdjax.models import from_teacher_layers
    from kdjax.training.mesh import make_mesh, param_sharding, put_batch
    from kdjax.training.step import (
        init_state,
        kd_hparams,
        make_optimizer,
        make_train_step,
        objective,
    )
    from kdjax.training.teacher import load_teacher

    mesh = make_mesh()
    rule = param_sharding(mesh)
    cfg = type("C", (), {"teacher": teacher, "teacher_checkpoint": "hs", "task": "classification"})
    t_graphdef, t_params = nnx.split(load_teacher(cfg, ("rotten", "fresh"), rule))
    graphdef, params = nnx.split(
        from_teacher_layers(
            minilm_dir(), "classification", [0, 3], labels=["rotten", "fresh"], sharding=rule
        )
    )
    tx, _ = make_optimizer(TrainConfig(learning_rate=1e-4), 10_000)
    kd = KDConfig(distance="ce", alpha=0.5, tau_t=2.0)
    rng = np.random.default_rng(0)
    rows = {
        "input_ids": rng.integers(1000, 30000, (batch, seq)).astype(np.int32),
        "attention_mask": np.ones((batch, seq), np.int32),
        "token_type_ids": np.zeros((batch, seq), np.int32),
        "labels": rng.integers(0, 2, batch).astype(np.int32),
    }
    modes = {
        "online": (t_graphdef, rows),
        "cached": (None, {**rows, "teacher_logits": rng.normal(size=(batch, 2)).astype("f4")}),
    }
    runners = {}
    for name, (t_gd, b) in modes.items():
        step = make_train_step(graphdef, tx, objective("classification", kd), teacher_graphdef=t_gd)
        runners[name] = [step, init_state(params, tx), b]
    out = {name: [] for name in modes}
    for r in range(rounds + 1):  # round 0 compiles and warms up
        for name, runner in runners.items():
            step, state, b = runner
            t = time.perf_counter()
            for _ in range(steps):
                state, m = step(
                    state, t_params, put_batch(b, mesh), jax.random.key(0), kd_hparams(kd)
                )
            jax.block_until_ready(m["loss"])
            runner[1] = state
            if r:
                out[name].append(round((time.perf_counter() - t) / steps, 4))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="runs/demo/teacher")
    p.add_argument("--train", type=int, default=1000, help="training examples")
    p.add_argument("--eval", type=int, default=200, help="validation and test examples each")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of steady-state steps")
    args = p.parse_args()

    from kdjax.config import parse_config
    from kdjax.data.sources import minilm_dir
    from kdjax.models import from_pretrained, save_pretrained
    from kdjax.training import train

    work = Path(tempfile.mkdtemp(prefix="kdjax-bench-"))
    teacher = args.teacher
    if not (Path(teacher) / "model" / "config.json").is_file():
        model = from_pretrained(minilm_dir(), "classification", labels=["rotten", "fresh"])
        teacher = str(save_pretrained(model, work / "teacher"))

    def config(name: str, mode: str):
        return parse_config(
            {
                "data": {
                    "source": "rotten_tomatoes",
                    "labels": ["rotten", "fresh"],
                    "max_length": 64,
                    "limit": {"train": args.train, "validation": args.eval, "test": args.eval},
                },
                "model": {"preset": "minilm-l2"},
                "teacher": teacher,
                "teacher_mode": mode,
                "cache_dir": str(work / "cache"),
                "kd": {"distance": "ce", "alpha": 0.5, "tau_t": 2.0},
                "train": {"epochs": args.epochs, "batch_size": 32, "learning_rate": 1e-4},
                "output_dir": str(work / name),
            }
        )

    step_s = _step_times(teacher, args.rounds)
    times, results = {}, {}
    for name, mode in (("online", "online"), ("cached_first", "cached"), ("cached_warm", "cached")):
        t = time.perf_counter()
        results[name] = train(config(name, mode), progress=False)
        times[name] = time.perf_counter() - t
    metric = results["online"]["metric"]
    # Equal up to float rounding: the online teacher sees length-trimmed batches, the cache
    # full-length rows, and Adam magnifies last-bit differences on near-zero gradients.
    print(
        json.dumps(
            {
                "benchmark": "teacher_cache",
                "what": "one distillation: online teacher vs cached teacher logits (wall time, s)",
                "teacher": teacher,
                "student": "minilm-l2",
                "train_examples": args.train,
                "eval_examples": args.eval,
                "epochs": args.epochs,
                "steps": results["online"]["steps"],
                "online_s": round(times["online"], 2),
                "cached_first_use_s": round(times["cached_first"], 2),
                "cached_warm_s": round(times["cached_warm"], 2),
                "speedup_warm": round(times["online"] / times["cached_warm"], 3),
                "speedup_first_use": round(times["online"] / times["cached_first"], 3),
                "online_step_s": step_s["online"],
                "cached_step_s": step_s["cached"],
                "step_speedup": round(
                    statistics.median(step_s["online"]) / statistics.median(step_s["cached"]), 3
                ),
                "online_train_s": results["online"]["train_time_s"],
                "cached_train_s": results["cached_warm"]["train_time_s"],
                "test_metric_online": results["online"]["test"][metric],
                "test_metric_cached": results["cached_warm"]["test"][metric],
                "jax": jax.__version__,
                "backend": jax.default_backend(),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
