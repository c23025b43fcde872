"""Shared test inputs: the shipped fixture files and tiny model settings."""

from pathlib import Path

DATA = Path(__file__).parent / "data"

# Sentiment sentences (neg/pos) in the three local formats a classification source reads.
SENTIMENT = {
    "source": "files",
    "files": {
        "train": str(DATA / "sentiment_train.csv"),
        "validation": str(DATA / "sentiment_validation.jsonl"),
        "test": str(DATA / "sentiment_test.jsonl"),
    },
    "text_column": "sentence",
    "label_column": "sentiment",
}

CONLL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def tiny_model(layers: int = 1, heads: int = 2) -> dict:
    """A random student small enough for tests: hidden 32, the MiniLM tokenizer."""
    return {
        "init": "random",
        "layers": layers,
        "hidden": 32,
        "heads": heads,
        "intermediate": 64,
        "tokenizer": "all-minilm-l6-v2",
    }


def _extra_installed(extra: str, but: str) -> bool:
    """Whether every requirement of kdjax's `extra` other than the distribution `but` is
    installed: then the environment was installed with that extra on purpose."""
    import re
    from importlib import metadata

    try:
        requires = metadata.distribution("kdjax").requires or []
    except metadata.PackageNotFoundError:
        return False
    names = [
        re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]
        for r in requires
        if re.search(rf"extra\s*==\s*['\"]{extra}['\"]", r)
    ]
    others = [n for n in names if n.lower().replace("_", "-") != but.lower().replace("_", "-")]
    for name in others:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return False
    return bool(names)


def require(module: str, distribution: str | None = None, extra: str = "test"):
    """`module`, imported; a missing one fails the test rather than skipping it when the
    environment has kdjax's `extra` installed (the README's test command does), when the
    package itself is installed but the module is not (it moved), or when KDJAX_TEST_STRICT=1.
    It skips only where the optional dependency was never asked for (KDJAX_TEST_STRICT=0
    forces a skip)."""
    import importlib
    import os
    from importlib import metadata

    import pytest

    dist = distribution or module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        strict = os.environ.get("KDJAX_TEST_STRICT")
        try:
            metadata.distribution(dist)
            installed = True
        except metadata.PackageNotFoundError:
            installed = False
        if strict == "1" or (strict != "0" and (installed or _extra_installed(extra, dist))):
            pytest.fail(f"{module} is needed by this test and cannot be imported ({e}); "
                        f"install kdjax[{extra}]", pytrace=False)  # fmt: skip
        why = f"{module} not installed (kdjax[{extra}] not installed)"
        pytest.skip(why, allow_module_level=True)
