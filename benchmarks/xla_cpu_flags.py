"""The KD train step of `step_throughput.py` (kdjax side) under several XLA CPU flag sets, side by
side against XLA's defaults.

XLA reads its flags once per process, so each flag set gets its own worker process; the workers
take turns, round by round, so that other load on the machine slows them alike. The flag sets
hand matrix products to other libraries (XNNPACK, oneDNN, YNNPACK) or widen vectors to 512 bits.
The default worker also prints the step's FLOPs from XLA's cost analysis.

    python benchmarks/xla_cpu_flags.py [--seq 128] [--steps 2] [--rounds 4]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

VARIANTS = {
    "default": "",
    "xnn_individual_dot": "--xla_cpu_experimental_xnn_fusion_type=individual_dot",
    "xnn_dot": "--xla_cpu_experimental_xnn_fusion_type=dot",
    "onednn_individual_dot": "--xla_cpu_experimental_onednn_fusion_type=individual_dot",
    "ynn_individual_dot": "--xla_cpu_experimental_ynn_fusion_type=individual_dot",
    "vector_width_512": "--xla_cpu_prefer_vector_width=512",
}


def _worker(seq: int, batch: int) -> None:
    """Build the step, then answer each line N on stdin with the seconds per step of N steps."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import step_throughput as st

    from kdjax.data.sources import minilm_dir

    run = st.kdjax_runner(minilm_dir(), st._batch(batch, seq, 30522))
    run(2)  # compile, warm up
    print(json.dumps({"ready": True, "gflop": run.gflop()}), flush=True)
    for line in sys.stdin:
        n = int(line)
        print(json.dumps(run(n) / n), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=2, help="timed steps per round and flag set")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return _worker(args.seq, args.batch)

    load_before = os.getloadavg()[0]
    procs, gflop = {}, {}
    for name, flags in VARIANTS.items():
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        if flags:
            env["XLA_FLAGS"] = flags
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--seq", str(args.seq),
               "--batch", str(args.batch)]  # fmt: skip
        procs[name] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True, env=env)  # fmt: skip
        gflop[name] = json.loads(procs[name].stdout.readline())["gflop"]  # one compiles at a time
    per_step: dict[str, list[float]] = {name: [] for name in procs}
    for _ in range(args.rounds):
        for name, proc in procs.items():
            proc.stdin.write(f"{args.steps}\n")
            proc.stdin.flush()
            per_step[name].append(float(proc.stdout.readline()))
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    base = per_step["default"]
    ratio = {n: [b / t for b, t in zip(base, ts, strict=True)] for n, ts in per_step.items()}
    print(json.dumps({
        "benchmark": "xla_cpu_flags", "seq": args.seq, "batch": args.batch,
        "steps_per_round": args.steps, "rounds": args.rounds,
        "gflop_per_step": round(gflop["default"], 1),
        "step_s_median": {n: round(statistics.median(t), 4) for n, t in per_step.items()},
        "speedup_over_default": {n: round(statistics.median(r), 3) for n, r in ratio.items()},
        "speedup_min_max": {n: [round(min(r), 3), round(max(r), 3)] for n, r in ratio.items()},
        "flags": VARIANTS,
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
