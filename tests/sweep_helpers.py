"""Fake run functions for the sweep tests: module-level, so Ray workers can import them.

Each takes a run config as JSON (like `kdjax.sweep.execute`) and returns a result dict whose
validation score is a known function of the config, without training anything.
"""

import copy
import json
import os
import time
from pathlib import Path

import yaml
from fixtures import SENTIMENT, tiny_model

DATA = Path(__file__).parent / "data"

CALLS: list[str] = []  # output dirs of the runs executed in this process, in order


def score(cfg: dict) -> float:
    """Students with 1 layer prefer kl, 2 layers mse; both prefer alpha 1.0 and tau_t 2."""
    kd = cfg.get("kd")
    if cfg.get("teacher") is None:
        return 0.9
    if kd is None or kd["alpha"] == 0:
        return 0.2
    liked = "kl" if cfg["model"].get("layers", 1) == 1 else "mse"
    s = 0.3 + 0.3 * (kd["distance"] == liked) + 0.1 * (kd["alpha"] == 1.0)
    s += 0.05 * (kd["tau_t"] == 2.0) + 0.02 * (kd["tau_s"] == "same")
    s += {"hs": 0.0, "ll": 0.01}[cfg["teacher_checkpoint"]]
    return s + 0.001 * cfg["train"]["seed"]


def result(cfg: dict, val: float) -> dict:
    """A run's result with validation score `val` and a test score anti-correlated with it, so
    that any choice made on test instead of validation picks other winners."""
    return {
        "metric": "accuracy",
        "validation": {"accuracy": val, "loss": 1 - val},
        "test": {"accuracy": 1 - val, "loss": val, "agreement": 0.5},
        "best_epoch": 1,
        "train_time_s": 0.5,
        "wall_time_s": 0.6,
        "versions": {"fake": "1"},
        "data": {"examples": {"train": 48, "validation": 16, "test": 16}},
    }


def planted(config_json: str) -> dict:
    cfg = json.loads(config_json)
    CALLS.append(Path(cfg["output_dir"]).name)
    return result(cfg, score(cfg))


def fails_on_mse(config_json: str) -> dict:
    cfg = json.loads(config_json)
    CALLS.append(Path(cfg["output_dir"]).name)
    if (cfg.get("kd") or {}).get("distance") == "mse":
        raise FloatingPointError("loss became nan at step 3 (planted)")
    return result(cfg, score(cfg))


def slow(config_json: str) -> dict:
    """For Ray: a short sleep; dies once (os._exit) on a distance 'kl' run, raises on 'mse'."""
    cfg = json.loads(config_json)
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    time.sleep(0.2)
    distance = (cfg.get("kd") or {}).get("distance")
    if distance == "kl" and (cfg["kd"]["alpha"] == 1.0):
        marker = out / "crashed-once"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)  # the worker process dies: Ray retries the task
    if distance == "mse":
        raise ValueError("planted application error")
    with (out / "executions.log").open("a") as f:
        f.write(f"{os.getpid()}\n")
    return result(cfg, score(cfg))


# A tiny study on the sentiment fixtures (fake runs never read the files).
def tiny(layers):
    return tiny_model(layers=layers, heads=4)


BASE = {
    "name": "t",
    "datasets": [
        {
            "name": "sent",
            "task": "classification",
            "data": {**SENTIMENT, "max_length": 32},
        }
    ],
    "teacher": {"model": tiny(2)},
    "students": [{"name": "s1", "model": tiny(1)}, {"name": "s2", "model": tiny(2)}],
    "axes": {"distance": ["ce", "kl"], "alpha": [0.5, 1.0]},
    "seeds": [0],
    "train": {"default": {"epochs": 1}},
}


def manifest(tmp_path, name="m.yaml", **over):
    d = copy.deepcopy(BASE)
    d.update(over)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d))
    return path


def timed(config_json: str) -> dict:
    """For the scale-out tests: sleeps 0.4 s x epochs, times the student's layers for the
    first stage's runs (the baseline and the default point ce, alpha 0.5), 0.2 s for a
    teacher (3 s with max_length >= 64); records its own start and end time, process and TPU
    environment in OUTPUT_DIR/timing.json."""
    cfg = json.loads(config_json)
    start = time.time()
    kd = cfg.get("kd") or {}
    if cfg.get("teacher") is None:  # a teacher: 3 s on data with max_length >= 64
        time.sleep(0.2 if cfg["data"]["max_length"] < 64 else 3.0)
    else:
        first = kd.get("alpha") == 0 or (kd.get("distance"), kd.get("alpha")) == ("ce", 0.5)
        layers = cfg["model"].get("layers", 1) if first else 1
        time.sleep(0.4 * layers * cfg["train"]["epochs"])
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    tpu = {k: v for k, v in os.environ.items() if k.startswith("TPU_")}
    record = {"start": start, "end": time.time(), "pid": os.getpid(), "tpu": tpu}
    (out / "timing.json").write_text(json.dumps(record))
    return result(cfg, score(cfg))
