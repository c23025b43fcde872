"""A real two-process run on localhost (jax.distributed, CPU backend, gloo collectives) ends
with the same model as one process driving the same four devices."""

import json
import os
import socket
import subprocess
import sys

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
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(
        JAX_PLATFORMS="cpu",
        HF_HUB_OFFLINE="1",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        **extra,
    )
    return env


def _kdjax(cfg_path, env):
    return subprocess.Popen(
        [sys.executable, "-m", "kdjax.cli", "finetune", str(cfg_path), "-q"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_processes_equal_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(_config(one)))
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(_config(two)))
    single = _kdjax(tmp_path / "one.yaml", _env(4))
    assert single.wait(timeout=300) == 0, single.stdout.read()

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [
        _kdjax(
            tmp_path / "two.yaml",
            _env(
                2,
                KDJAX_DISTRIBUTED="1",
                KDJAX_COORDINATOR=f"localhost:{port}",
                KDJAX_NUM_PROCESSES="2",
                KDJAX_PROCESS_ID=str(i),
            ),
        )
        for i in range(2)
    ]
    logs = []
    for p in procs:
        code = p.wait(timeout=300)
        logs.append(p.stdout.read())
        assert code == 0, logs[-1]
    assert "process 1 of 2: 2 local devices, 4 global" in "".join(logs)

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
