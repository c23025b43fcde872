"""Run configs fail at load time, naming the field and what is allowed."""

import pytest
import yaml
from pydantic import ValidationError

from kdjax.config import ConfigError, load_config, parse_config

GOOD = {
    "task": "classification",
    "data": {"source": "files", "files": {"train": "t.csv"}, "labels": ["neg", "pos"]},
    "model": {"init": "teacher_layers", "path": "all-minilm-l6-v2", "layers": [0, 3]},
    "teacher": "runs/teacher",
    "kd": {"distance": "kl", "alpha": 0.5, "tau_t": 2.0, "tau_s": 1},
    "output_dir": "out",
}


def _with(path, value):
    import copy

    d = copy.deepcopy(GOOD)
    node = d
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return d


def test_good_config_round_trips(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(GOOD))
    cfg = load_config(f)
    assert cfg.kd.student_tau == 1.0 and cfg.train.epochs == 3
    assert parse_config(cfg.model_dump(mode="json")) == cfg
    with pytest.raises(ValidationError, match="frozen"):
        cfg.kd.alpha = 0.1
    assert load_config(f, {"output_dir": "elsewhere"}).output_dir == "elsewhere"
    same = parse_config(_with("kd.tau_s", "same"))
    assert same.kd.student_tau == 2.0


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("kd.distance", "euclid", r"kd.distance: unknown distance 'euclid'; allowed: ce, cosine"),
        ("kd.alpha", 1.5, r"kd.alpha: Input should be less than or equal to 1"),
        ("kd.alpha", -0.1, r"kd.alpha: Input should be greater than or equal to 0"),
        ("kd.tau_t", 0, r"kd.tau_t: Input should be greater than 0"),
        ("kd.tau_s", -1, r"kd.tau_s: must be > 0 or 'same', got -1"),
        ("kd.temperature", 2, r"kd.temperature: unknown key"),
        ("task", "summary", r"task: Input should be 'classification', 'token_classification'"),
        ("model.init", "magic", r"model: Input tag 'magic' found using 'init' does not match"),
        ("train.epochs", 0, r"train.epochs: Input should be greater than or equal to 1"),
        ("data.source", "ftp", r"data.source: Input should be 'rotten_tomatoes', 'files' or 'hub'"),
        ("data.files", None, r"data.files: required with source 'files'"),
        ("data.labels", ["a", "a"], r"data.labels: duplicate names"),
        ("data.max_length", 4096, r"data.max_length: Input should be less than or equal to 512"),
    ],
)
def test_bad_values_name_the_field(path, value, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(_with(path, value))


def test_kd_without_teacher_is_rejected():
    d = dict(GOOD)
    d.pop("teacher")
    with pytest.raises(ConfigError, match="teacher: required when kd.alpha > 0"):
        parse_config(d)


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kd: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(bad)
