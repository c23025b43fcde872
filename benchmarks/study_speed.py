"""Wall time of one mini-study (≥ 12 distillation configurations, one dataset, one student size)
run three ways in one process: one run at a time with the online teacher; one at a time with
cached teacher logits; all together in grouped steps (`train_group`) with cached logits.

    python benchmarks/study_speed.py [--teacher DIR] [--student minilm-l1] [--train 512]
        [--eval 128] [--epochs 1] [--max-group 12]

Configurations: distance {ce, kl, mse} x alpha {0.5, 1.0} x tau_t {1, 2} on the offline Rotten
Tomatoes snippets. The teacher defaults to all-MiniLM-L6-v2 with a seeded fresh head saved as a
plain checkpoint. JAX's persistent compilation cache stays off, so every one-at-a-time run pays
its compiles as a fresh process would. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import jax.monitoring

GRID = {"distance": ("ce", "kl", "mse"), "alpha": (0.5, 1.0), "tau_t": (1.0, 2.0)}
_compile_s = [0.0]


def _on_event(event: str, seconds: float, **_) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _compile_s[0] += seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default=None, help="a checkpoint or teacher run directory")
    p.add_argument("--student", default="minilm-l1", help="a student preset")
    p.add_argument("--train", type=int, default=512, help="training examples")
    p.add_argument("--eval", type=int, default=128, help="validation and test examples each")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-group", type=int, default=12, help="members per grouped step, at most")
    args = p.parse_args()

    jax.config.update("jax_enable_compilation_cache", False)
    jax.monitoring.register_event_duration_secs_listener(_on_event)
    from kdjax.config import parse_config
    from kdjax.data.sources import minilm_dir
    from kdjax.models import from_pretrained, save_pretrained
    from kdjax.training import train
    from kdjax.training.grouped import group_key, max_group_size, train_group

    work = Path(tempfile.mkdtemp(prefix="kdjax-study-speed-"))
    teacher = args.teacher
    if teacher is None:
        model = from_pretrained(minilm_dir(), "classification", labels=["rotten", "fresh"])
        teacher = str(save_pretrained(model, work / "teacher"))

    def config(mode: str, i: int, distance: str, alpha: float, tau_t: float):
        return parse_config(
            {
                "data": {
                    "source": "rotten_tomatoes",
                    "labels": ["rotten", "fresh"],
                    "max_length": 64,
                    "limit": {"train": args.train, "validation": args.eval, "test": args.eval},
                },
                "model": {"preset": args.student},
                "teacher": teacher,
                "teacher_mode": "online" if mode == "online" else "cached",
                "cache_dir": str(work / "cache"),
                "kd": {"distance": distance, "alpha": alpha, "tau_t": tau_t},
                "train": {
                    "epochs": args.epochs,
                    "batch_size": args.batch_size,
                    "learning_rate": 1e-4,
                },
                "output_dir": str(work / mode / f"run{i:02d}"),
            }
        )

    points = list(itertools.product(*GRID.values()))
    cfgs = {m: [config(m, i, *pt) for i, pt in enumerate(points)] for m in ("online", "cached")}
    cfgs["grouped"] = [config("grouped", i, *pt) for i, pt in enumerate(points)]
    assert len({group_key(c) for c in cfgs["grouped"]}) == 1
    free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    size = max_group_size(cfgs["grouped"][0], free // 2, cap=args.max_group)

    times, compile_s, results = {}, {}, {}
    for mode in ("online", "cached", "grouped"):
        _compile_s[0] = 0.0
        t = time.perf_counter()
        if mode == "grouped":
            runs = cfgs[mode]
            results[mode] = [
                r
                for i in range(0, len(runs), size)
                for r in train_group(runs[i : i + size], progress=False)
            ]
        else:
            results[mode] = [train(c, progress=False) for c in cfgs[mode]]
        times[mode], compile_s[mode] = time.perf_counter() - t, _compile_s[0]

    n = len(points)
    cached, grouped = results["cached"], results["grouped"]
    first_cached = cached[0]["wall_time_s"]  # built the logit cache (one teacher pass)
    warm_cached = sum(r["wall_time_s"] for r in cached[1:]) / max(n - 1, 1)
    metric = cached[0]["metric"]
    pairs = [(g, c) for g, c in zip(grouped, cached, strict=True) if not g.get("failed")]
    diff = max((abs(g["test"][metric] - c["test"][metric]) for g, c in pairs), default=None)
    print(
        json.dumps(
            {
                "benchmark": "study_speed",
                "what": f"{n} distillation configs, one at a time (online / cached teacher) vs "
                "grouped steps (cached teacher); wall time of the whole mini-study, s",
                "grid": GRID,
                "student": args.student,
                "teacher": teacher,
                "train_examples": args.train,
                "eval_examples": args.eval,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "steps_per_run": cached[0]["steps"],
                "group_size": size,
                "online_s": round(times["online"], 2),
                "cached_s": round(times["cached"], 2),
                "grouped_s": round(times["grouped"], 2),
                "speedup_cached_vs_online": round(times["online"] / times["cached"], 2),
                "speedup_grouped_vs_online": round(times["online"] / times["grouped"], 2),
                "speedup_grouped_vs_cached": round(times["cached"] / times["grouped"], 2),
                # XLA compile time (all jits: model init, step, predict) and the rest.
                "compile_s": {k: round(v, 2) for k, v in compile_s.items()},
                "non_compile_s": {k: round(times[k] - v, 2) for k, v in compile_s.items()},
                "cached_first_run_s": first_cached,
                "cached_warm_run_s_mean": round(warm_cached, 2),
                "cached_train_s_mean": round(sum(r["train_time_s"] for r in cached) / n, 2),
                "grouped_train_s_total": grouped[0]["group"]["train_time_s"],
                "failed": {k: sum(bool(r.get("failed")) for r in v) for k, v in results.items()},
                "max_test_metric_diff_grouped_vs_cached": diff,
                "persistent_compile_cache": False,
                "jax": jax.__version__,
                "backend": jax.default_backend(),
                "devices": jax.device_count(),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
