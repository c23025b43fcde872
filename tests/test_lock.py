"""requirements/lock.txt pins every runtime dependency of pyproject.toml (kdjax[ray]) at a
version its range allows, so that a relaunched study installs the same stack."""

import re
import sys
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "requirements"))
from lock import canonical, runtime_requirements  # noqa: E402

STACK = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "datasets",
         "huggingface-hub", "safetensors", "ray", "numpy")  # fmt: skip


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements" / "lock.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line.strip())
        assert m, f"not an exact pin: {line!r}"
        name = canonical(m.group(1))
        assert name not in pins, f"{name} pinned twice"
        pins[name] = m.group(2)
    return pins


def test_lock_pins_every_runtime_dependency():
    pins = _pins()
    for req in runtime_requirements():
        name = canonical(req.name)
        assert name in pins, f"{req.name} (pyproject) is not pinned in requirements/lock.txt"
        assert Version(pins[name]) in req.specifier, f"{name}=={pins[name]} outside {req}"
    assert set(STACK) <= set(pins)
    assert "torch" not in pins and "kdjax" not in pins  # test-only / the project itself
    assert pins["jax"] == pins["jaxlib"]
