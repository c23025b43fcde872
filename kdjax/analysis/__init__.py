"""The study's analysis, from a ledger: each option's effect as a paired contrast (chosen on
validation, reported on test, with calibrated intervals and minimum detectable effects), the
single configuration for every pair with its regrets, the KD gain, ranks across pairs, and the
report (Markdown, HTML, figures, effects.csv, recommendation.json).

`effects_frame(workdir)` and `recommendation(workdir)` return the machine-readable answers."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "write_report": "report",
    "analyse_workdir": "report",
    "load_study": "load",
    "seed_table": "load",
    "analyse": "results",
    "find_gaps": "gaps",
    "effects_frame": "results",
    "recommendation": "results",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Imported on first use: reading a ledger should not pay for matplotlib.
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kdjax.analysis' has no attribute {name!r}")
    return getattr(import_module(f"kdjax.analysis.{_EXPORTS[name]}"), name)
