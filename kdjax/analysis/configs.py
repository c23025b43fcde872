"""KD configurations as the analysis compares them.

A configuration is the tuple of KD axes a distillation run was trained with. `tau_s` is kept
as given ('same' or a number) for labels, and resolved to a number for comparisons, so
`tau_t=2, tau_s=same` and `tau_t=2, tau_s=2` are one configuration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

KD_AXES = ("teacher_checkpoint", "distance", "alpha", "tau_t", "tau_s", "tau_squared")
# Manifest axis names that differ from the ledger's column names.
MANIFEST_AXES = {"teacher": "teacher_checkpoint"}
AXIS_NAMES = {
    "teacher_checkpoint": "teacher checkpoint",
    "distance": "distance",
    "alpha": "alpha",
    "tau_t": "teacher temperature (tau_t)",
    "tau_s": "student temperature (tau_s)",
    "tau_squared": "tau^2 scaling",
}
Pair = tuple[str, str]  # (dataset, student)


def fmt_value(v: Any) -> str:
    """A short, stable text form of an axis value."""
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, int | float):
        return f"{v:g}"
    return str(v)


def _number(v: Any) -> float | None:
    return None if v is None else float(v)


def given_tau_s(v: Any) -> float | str | None:
    if v is None or v == "same":
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


@dataclass(frozen=True)
class Config:
    """One KD configuration: normalised axis values (compared) and the values as given."""

    items: tuple[tuple[str, Any], ...]
    given: tuple[tuple[str, Any], ...] = field(default=(), compare=False)

    def __getitem__(self, axis: str) -> Any:
        return dict(self.items).get(axis)

    def given_value(self, axis: str) -> Any:
        return dict(self.given or self.items).get(axis)

    @property
    def is_baseline(self) -> bool:
        return self is BASELINE or self.items == BASELINE.items

    def has(self, axis: str, option: Any) -> bool:
        """Whether this configuration has `option` (given form) on `axis`."""
        if self.is_baseline:
            return axis == "alpha" and option is not None and float(option) == 0.0
        if axis == "tau_s":
            target = self["tau_t"] if option == "same" else _number(option)
            return self["tau_s"] == target
        value = self[axis]
        if isinstance(value, float) and isinstance(option, int | float):
            return value == float(option)
        return value == option

    def label(self, axes: tuple[str, ...] | list[str] | None = None) -> str:
        """`hs ce alpha=0.5 tau_t=2 tau_s=same`, limited to `axes` when given."""
        if self.is_baseline:
            return "no KD"
        parts = []
        for axis, _ in self.items:
            if axes is not None and axis not in axes:
                continue
            v = self.given_value(axis)
            if axis in ("teacher_checkpoint", "distance"):
                parts.append(str(v))
            elif axis == "tau_squared":  # off is the usual case: named only when asked for
                parts.append(f"tau^2={fmt_value(v)}" if axes is not None else "tau^2" * bool(v))
            else:
                parts.append(f"{axis}={fmt_value(v)}")
        return " ".join(p for p in parts if p) or "(default)"


BASELINE = Config((("kind", "baseline"), ("alpha", 0.0)))


def config_of(row: dict[str, Any], extra_axes: tuple[str, ...] = ()) -> Config:
    """The configuration of a distillation row (ledger columns, plus extra config paths)."""
    tau_t = _number(row.get("tau_t"))
    as_given = given_tau_s(row.get("tau_s"))
    tau_s = tau_t if as_given == "same" else as_given
    norm = {
        "teacher_checkpoint": row.get("teacher_checkpoint"),
        "distance": row.get("distance"),
        "alpha": _number(row.get("alpha")),
        "tau_t": tau_t,
        "tau_s": tau_s,
        "tau_squared": bool(row.get("tau_squared")),
    }
    given = {**norm, "tau_s": as_given}
    if extra_axes:
        cfg = json.loads(row.get("config_json") or "{}")
        for path in extra_axes:
            v: Any = cfg
            for part in path.split("."):
                v = v.get(part) if isinstance(v, dict) else None
            norm[path] = given[path] = v if not isinstance(v, list | dict) else json.dumps(v)
    return Config(tuple(norm.items()), tuple(given.items()))
