"""The teacher-logit cache: keying, verification on read, atomic builds, process safety."""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kdjax.training import logit_cache
from kdjax.training.logit_cache import CacheError, LogitCache

INPUTS = {
    "teacher_sha256": "ab" * 32,
    "dataset": {"name": "sst2", "revision": "r1"},
    "tokenization": {"tokenizer": "bert-base-uncased", "max_length": 128},
    "task": "classification",
}


def _other(**tok) -> dict:
    return {**INPUTS, "tokenization": {**INPUTS["tokenization"], **tok}}


def _arrays(scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        "train": (np.arange(24, dtype=np.float32).reshape(8, 3) - 5) * scale,
        "validation": np.linspace(-2, 2, 2 * 4 * 2).reshape(2, 4, 2),  # float64: gets cast
    }


class Counter:
    def __init__(self, scale: float = 1.0):
        self.calls = 0
        self.scale = scale

    def __call__(self) -> dict[str, np.ndarray]:
        self.calls += 1
        return _arrays(self.scale)


def _assert_matches(got: dict, scale: float = 1.0) -> None:
    want = _arrays(scale)
    assert set(got) == set(want)
    for name, arr in want.items():
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], arr.astype(np.float32))


def test_builds_once_then_loads_read_only_memmaps(tmp_path):
    cache = LogitCache(tmp_path)
    build = Counter()
    first = cache.get_or_build(INPUTS, build)
    second = cache.get_or_build(INPUTS, build)
    assert build.calls == 1
    _assert_matches(first)
    _assert_matches(second)
    for arr in second.values():
        assert isinstance(arr, np.memmap)
        assert not arr.flags.writeable
    assert cache.verify(INPUTS) is None

    entry = cache.path(INPUTS)
    assert entry == tmp_path / LogitCache.key(INPUTS)[:16]
    manifest = json.loads((entry / "manifest.json").read_text())
    assert manifest["format"] == logit_cache.FORMAT_VERSION
    assert manifest["key"] == LogitCache.key(INPUTS)
    assert manifest["inputs"] == INPUTS
    assert manifest["arrays"]["validation"]["shape"] == [2, 4, 2]
    assert manifest["bytes"] == sum(p.stat().st_size for p in entry.glob("*.npy"))
    assert not list(tmp_path.glob(".tmp-*"))


def test_key_is_canonical_and_covers_every_input():
    reordered = dict(reversed(list(INPUTS.items())))
    assert LogitCache.key(reordered) == LogitCache.key(INPUTS)
    keys = {
        LogitCache.key(INPUTS),
        LogitCache.key(_other(max_length=256)),
        LogitCache.key({**INPUTS, "teacher_sha256": "cd" * 32}),
        LogitCache.key({**INPUTS, "task": "ner"}),
    }
    assert len(keys) == 4


def test_other_inputs_get_their_own_entry_and_a_foreign_entry_is_rebuilt(tmp_path):
    cache = LogitCache(tmp_path)
    build_a, build_b = Counter(), Counter(scale=2.0)
    cache.get_or_build(INPUTS, build_a)
    other = _other(max_length=256)
    assert cache.path(other) != cache.path(INPUTS)
    assert cache.verify(other) == "missing"

    # An entry built for INPUTS sitting at the other inputs' path must not be trusted.
    shutil.copytree(cache.path(INPUTS), cache.path(other))
    reason = cache.verify(other)
    assert reason == "built for other inputs: differs in tokenization.max_length"
    teacher = {**INPUTS, "teacher_sha256": "cd" * 32}
    shutil.copytree(cache.path(INPUTS), cache.path(teacher))
    assert cache.verify(teacher) == "built for other inputs: differs in teacher_sha256"

    logs: list[str] = []
    got = cache.get_or_build(other, build_b, log=logs.append)
    assert build_b.calls == 1
    _assert_matches(got, scale=2.0)
    assert logs == [f"teacher logit cache {cache.path(other)}: {reason}; rebuilding"]
    assert cache.verify(other) is None
    # The original entry is untouched.
    assert cache.verify(INPUTS) is None
    _assert_matches(cache.get_or_build(INPUTS, build_a))
    assert build_a.calls == 1


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) - 10  # inside the array data, past the header
    data[mid : mid + 4] = bytes(b ^ 0xFF for b in data[mid : mid + 4])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-7])


@pytest.mark.parametrize(
    ("damage", "expect"),
    [
        (_flip_middle, "corrupt: array 'train' sha256 mismatch"),
        (_truncate, "corrupt: array 'train' file is"),
        (lambda p: p.unlink(), "corrupt: array 'train' file missing"),
        (lambda p: p.write_bytes(b"garbage" * 40), "corrupt: array 'train' unreadable header"),
        (
            lambda p: np.save(p, np.zeros((3, 8), np.float32)),
            "corrupt: array 'train' is float32[3, 8]",
        ),
        (lambda p: (p.parent / "manifest.json").unlink(), "incomplete"),
        (lambda p: (p.parent / "manifest.json").write_text("{"), "corrupt: unreadable manifest"),
    ],
)
def test_damaged_entry_is_detected_and_rebuilt(tmp_path, damage, expect):
    cache = LogitCache(tmp_path)
    build = Counter()
    cache.get_or_build(INPUTS, build)
    size = (cache.path(INPUTS) / "train.npy").stat().st_size
    damage(cache.path(INPUTS) / "train.npy")
    if damage is _flip_middle:
        assert (cache.path(INPUTS) / "train.npy").stat().st_size == size
    reason = cache.verify(INPUTS)
    assert reason is not None and reason.startswith(expect), reason

    logs: list[str] = []
    got = cache.get_or_build(INPUTS, build, log=logs.append)
    assert build.calls == 2
    _assert_matches(got)
    assert cache.verify(INPUTS) is None
    assert len(logs) == 1 and reason in logs[0] and logs[0].endswith("; rebuilding")
    # The bad entry was renamed aside and deleted, not left behind.
    assert not list(tmp_path.glob(".bad-*"))


def test_default_log_is_a_module_warning(tmp_path, caplog):
    cache = LogitCache(tmp_path)
    cache.get_or_build(INPUTS, Counter())
    (cache.path(INPUTS) / "manifest.json").unlink()
    with caplog.at_level("WARNING", logger=logit_cache.__name__):
        cache.get_or_build(INPUTS, Counter())
    assert any("incomplete; rebuilding" in r.getMessage() for r in caplog.records)


def test_non_finite_logits_raise_naming_the_array(tmp_path):
    cache = LogitCache(tmp_path)

    def broken():
        arrays = _arrays()
        arrays["validation"][1, 2, 0] = np.nan
        return arrays

    with pytest.raises(CacheError, match="'validation'.*NaN/inf"):
        cache.get_or_build(INPUTS, broken)
    # float64 values beyond float32 range overflow to inf on the cast.
    with pytest.raises(CacheError, match="'train'"):
        cache.get_or_build(INPUTS, lambda: {"train": np.array([1e300])})
    with pytest.raises(CacheError, match="non-empty"):
        cache.get_or_build(INPUTS, dict)
    with pytest.raises(CacheError, match="safe file name"):
        cache.get_or_build(INPUTS, lambda: {"../x": np.zeros(2, np.float32)})
    assert cache.verify(INPUTS) == "missing"
    assert not list(tmp_path.glob(".tmp-*"))


def test_entries_and_remove(tmp_path):
    cache = LogitCache(tmp_path)
    assert cache.entries() == []
    other = _other(max_length=64)
    cache.get_or_build(INPUTS, Counter())
    cache.get_or_build(other, Counter())
    listed = {json.dumps(e["inputs"], sort_keys=True) for e in cache.entries()}
    assert listed == {json.dumps(INPUTS, sort_keys=True), json.dumps(other, sort_keys=True)}
    assert all(e["path"] and e["bytes"] > 0 for e in cache.entries())

    _flip_middle(cache.path(other) / "train.npy")
    assert [e["inputs"] for e in cache.entries()] == [INPUTS]
    assert len(cache.entries(hashes=False)) == 2  # same size, so only the hash catches it

    assert cache.remove(INPUTS) is True
    assert cache.remove(INPUTS) is False
    assert cache.verify(INPUTS) == "missing"


# A separate process using the cache. The module is loaded from its file so the process starts
# without importing the rest of the package (and JAX with it).
_SCRIPT = r"""
import importlib.util, json, os, signal, sys, time
import numpy as np
spec = importlib.util.spec_from_file_location("logit_cache", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
root, mode, counter, inputs = sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5])

def build():
    if mode == "slow":
        print("building", flush=True)
        time.sleep(60)
    if mode == "concurrent":
        time.sleep(1)
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
    return {"train": np.arange(24, dtype=np.float32).reshape(8, 3) - 5, "extra": np.ones((3, 2))}

if mode == "die_before_rename":
    # Everything is written and fsynced; the process dies where the rename would happen.
    mod.os.rename = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
out = mod.LogitCache(root).get_or_build(inputs, build)
print(json.dumps({k: [float(v.sum()), list(v.shape)] for k, v in sorted(out.items())}))
"""


def _spawn(root: Path, mode: str, counter: Path | None = None) -> subprocess.Popen:
    args = [sys.executable, "-c", _SCRIPT, logit_cache.__file__, str(root), mode]
    args += [str(counter or root / "unused"), json.dumps(INPUTS)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_writer_killed_during_build_leaves_nothing_valid(tmp_path):
    proc = _spawn(tmp_path, "slow")
    try:
        assert proc.stdout.readline().strip() == "building", proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    cache = LogitCache(tmp_path)
    assert cache.verify(INPUTS) == "missing"
    # The dead writer's lock was released with it, so this does not wait.
    build = Counter()
    _assert_matches(cache.get_or_build(INPUTS, build))
    assert build.calls == 1


def test_writer_killed_before_rename_leaves_only_a_tmp_dir_that_is_cleaned(tmp_path):
    proc = _spawn(tmp_path, "die_before_rename")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err
    key16 = LogitCache.key(INPUTS)[:16]
    tmps = list(tmp_path.glob(f".tmp-{key16}-{proc.pid}-*"))
    assert len(tmps) == 1 and (tmps[0] / "manifest.json").is_file()  # fully written, yet...
    cache = LogitCache(tmp_path)
    assert cache.verify(INPUTS) == "missing"  # ...never read as an entry
    assert cache.entries() == []

    # A stale tmp dir of another key is kept while that key's lock is held (a live build),
    # and removed once it is free.
    other16 = LogitCache.key(_other(max_length=7))[:16]
    live = tmp_path / f".tmp-{other16}-{os.getpid()}-beef"
    live.mkdir()
    fd = os.open(tmp_path / f"{other16}.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        build = Counter()
        _assert_matches(cache.get_or_build(INPUTS, build))
        assert build.calls == 1
        assert not tmps[0].exists()
        assert live.exists()
    finally:
        os.close(fd)
    cache.remove(INPUTS)
    cache.get_or_build(INPUTS, Counter())
    assert not live.exists()


def test_concurrent_processes_build_exactly_once(tmp_path):
    counter = tmp_path / "builds.txt"
    root = tmp_path / "cache"
    procs = [_spawn(root, "concurrent", counter) for _ in range(3)]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        outs.append(json.loads(out))
    assert len(counter.read_text().splitlines()) == 1
    assert outs[0] == outs[1] == outs[2]
    assert outs[0] == {"extra": [6.0, [3, 2]], "train": [156.0, [8, 3]]}
    assert LogitCache(root).verify(INPUTS) is None
    assert not list(root.glob(".tmp-*"))
