"""Real two-process runs on localhost (jax.distributed, CPU backend, gloo collectives) end with
the same models as one process driving the same two devices: a fine-tuning run, then a
distillation from the one-process teacher whose logit-cache entry the two processes build
together (process 0 writes it, both map it). One launch runs both, to pay its start-up once.

One device per process, two in all: the gradient all-reduce then adds two operands, and
floating-point addition commutes, so the two layouts must agree to rounding in every parameter.
With four devices the one-process and the gloo reductions add four operands in different orders;
AdamW turns that rounding, on a parameter whose gradient is near zero, into a step of up to the
learning rate (measured: 1.7e-5 on one of 976,704 elements), which no parameter tolerance can
separate from a real error."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import yaml
from fixtures import SENTIMENT, tiny_model
from safetensors.numpy import load_file

# Runs each config file given, in order, in one process of the job (or alone).
_JOB = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
from kdjax.cli import enable_compile_cache
from kdjax.distributed import initialize
enable_compile_cache()
initialize()
from kdjax.config import load_config
from kdjax.training import train
for path in sys.argv[1:]:
    train(load_config(path), progress=False)
"""


def _config(out, **over):
    return {
        **over,
        "data": {**SENTIMENT, "max_length": 32},
        "model": tiny_model(),
        "train": {
            "epochs": 1,
            "batch_size": 12,
            "eval_batch_size": 16,
            "learning_rate": 1e-3,
            "log_every": 1,
        },
        "output_dir": str(out),
    }


def _env(devices, **extra):
    # No proxy may stand between the processes and their coordinator on loopback (gRPC honours
    # the *_proxy variables).
    env = {
        k: v for k, v in os.environ.items() if k != "XLA_FLAGS" and not k.lower().endswith("_proxy")
    }
    env.update(
        JAX_PLATFORMS="cpu",
        HF_HUB_OFFLINE="1",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        **extra,
    )
    return env


def _kdjax(cfg_paths, env, log):
    # Output goes to a file, never to a pipe nobody reads while waiting: a full pipe would block
    # one process while the other waits for it in a collective.
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-c", _JOB, *map(str, cfg_paths)],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def _wait_all(procs, logs, timeout):
    """Wait for every process; on a failure or a hang, stop them all and show every log."""
    deadline = time.monotonic() + timeout
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        codes.append("timed out")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = "\n".join(f"--- {log.name} ---\n{log.read_text()}" for log in logs)
    assert codes == [0] * len(procs), f"exit codes {codes}\n{text}"
    return text


def _same_model(a_dir, b_dir) -> None:
    a = load_file(str(a_dir / "model" / "model.safetensors"))
    b = load_file(str(b_dir / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-5, rtol=0, err_msg=k)
    ra = json.loads((a_dir / "result.json").read_text())
    rb = json.loads((b_dir / "result.json").read_text())
    assert ra["devices"] == rb["devices"] == 2
    np.testing.assert_allclose(rb["test"]["loss"], ra["test"]["loss"], rtol=1e-5)
    # Only process 0 wrote the metrics log: one line per log step, not two.
    assert len((b_dir / "metrics.jsonl").read_text().splitlines()) == len(
        (a_dir / "metrics.jsonl").read_text().splitlines()
    )


def test_two_processes_equal_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    kd = {"distance": "kl", "alpha": 0.7, "tau_t": 2.0}
    files = {}
    for name, cfg in {
        "one": _config(one / "teacher"),
        "two": _config(two / "teacher"),
        # Both distil from the one-process teacher; the two processes into their own cache.
        "one-kd": _config(one / "student", teacher=str(one / "teacher"), kd=kd),
        "two-kd": _config(
            two / "student", teacher=str(one / "teacher"), kd=kd, cache_dir=str(two / "cache")
        ),
    }.items():
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump(cfg))
    single_log = tmp_path / "one.log"
    _wait_all([_kdjax([files["one"], files["one-kd"]], _env(2), single_log)], [single_log], 300)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs = [tmp_path / f"two.{i}.log" for i in range(2)]
    procs = [
        _kdjax(
            [files["two"], files["two-kd"]],
            _env(
                1,
                KDJAX_DISTRIBUTED="1",
                KDJAX_COORDINATOR=f"127.0.0.1:{port}",
                KDJAX_NUM_PROCESSES="2",
                KDJAX_PROCESS_ID=str(i),
                KDJAX_INIT_TIMEOUT="120",
            ),
            logs[i],
        )
        for i in range(2)
    ]
    text = _wait_all(procs, logs, 400)
    assert "process 1 of 2: 1 local devices, 2 global" in text
    _same_model(one / "teacher", two / "teacher")
    _same_model(one / "student", two / "student")
    # One logit entry, built once by the job (not per process), equal to the one-process one.
    mine = list((two / "cache").glob("*/manifest.json"))
    ref = list((one / "teacher" / "logit_cache").glob("*/manifest.json"))
    assert len(mine) == len(ref) == 1 and mine[0].parent.name == ref[0].parent.name
    for split in ("train", "validation", "test"):
        a = np.load(ref[0].parent / f"{split}.npy")
        # The same teacher params on the same rows: agreement far tighter than the rows'
        # differences from each other (so rows out of order could not pass).
        assert np.abs(a - a[::-1]).max() > 1e-5
        np.testing.assert_allclose(np.load(mine[0].parent / f"{split}.npy"), a, atol=1e-6, rtol=0)
