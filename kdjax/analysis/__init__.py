"""The study's analysis: effects of each KD parameter, the cost of sub-optimal choices, the
best single configuration, and the report (Markdown, HTML, figures) built from a ledger."""

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
