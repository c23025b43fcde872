"""A real two-process run on localhost (jax.distributed, CPU backend, gloo collectives) ends
with the same model as one process driving the same four devices."""

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


def _config(out):
    return {
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


def _kdjax(cfg_path, env, log):
    # Output goes to a file, never to a pipe nobody reads while waiting: a full pipe would block
    # one process while the other waits for it in a collective.
    with open(log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "kdjax.cli", "finetune", str(cfg_path), "-q"],
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


def test_two_processes_equal_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(_config(one)))
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(_config(two)))
    single_log = tmp_path / "one.log"
    _wait_all([_kdjax(tmp_path / "one.yaml", _env(4), single_log)], [single_log], 300)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs = [tmp_path / f"two.{i}.log" for i in range(2)]
    procs = [
        _kdjax(
            tmp_path / "two.yaml",
            _env(
                2,
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
    text = _wait_all(procs, logs, 300)
    assert "process 1 of 2: 2 local devices, 4 global" in text

    a = load_file(str(one / "model" / "model.safetensors"))
    b = load_file(str(two / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-5, rtol=0, err_msg=k)
    ra = json.loads((one / "result.json").read_text())
    rb = json.loads((two / "result.json").read_text())
    assert ra["devices"] == rb["devices"] == 4
    np.testing.assert_allclose(rb["test"]["loss"], ra["test"]["loss"], rtol=1e-5)
    # Only process 0 wrote the metrics log: one line per log step, not two.
    assert len((two / "metrics.jsonl").read_text().splitlines()) == len(
        (one / "metrics.jsonl").read_text().splitlines()
    )
