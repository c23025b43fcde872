"""Study manifests: a YAML file (plus its includes) validated into one frozen object.

Everything that can be wrong with a manifest fails here, before any compute, with the field's
path and what is allowed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from kdjax.config import (
    ConfigError,
    DataConfig,
    Frozen,
    MeshConfig,
    ModelInit,
    TrainConfig,
    format_errors,
)
from kdjax.losses import DISTANCES
from kdjax.models.config import TASKS
from kdjax.sweep.compose import read_composed

log = logging.getLogger(__name__)

AXES = ("teacher", "distance", "alpha", "tau_t", "tau_s")
EQUIVALENT_DISTANCES = ("ce", "kl")  # equal gradients w.r.t. the student's logits
TRAIN_KEYS = ("default", *TASKS)
_INITS = ("pretrained", "teacher_layers", "random")
TrainKey = Literal["default", "classification", "token_classification", "extractive_qa"]


def _known_distance(v: str) -> str:
    if v not in DISTANCES:
        raise ValueError(f"unknown distance {v!r}; allowed: {', '.join(sorted(DISTANCES))}")
    return v


def _tau_s(v: Any) -> float | str:
    if v == "same":
        return v
    if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
        raise ValueError(f"must be a number > 0 or 'same', got {v!r}")
    return float(v)


class Axes(Frozen):
    """The KD parameters searched; each a non-empty list of unique values, default first."""

    teacher: tuple[Literal["hs", "ll"], ...] = Field(("hs",), min_length=1)
    distance: tuple[Annotated[str, AfterValidator(_known_distance)], ...] = Field(
        ("ce",), min_length=1
    )
    alpha: tuple[Annotated[float, Field(ge=0, le=1)], ...] = Field((0.5,), min_length=1)
    tau_t: tuple[Annotated[float, Field(gt=0)], ...] = Field((1.0,), min_length=1)
    tau_s: tuple[Annotated[Any, BeforeValidator(_tau_s)], ...] = Field(("same",), min_length=1)

    @field_validator("*", mode="before")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, list | tuple) and not v:
            raise ValueError("empty list; give at least one value (the first is the default)")
        return v

    @field_validator("*")
    @classmethod
    def _unique(cls, v: tuple) -> tuple:
        dup = sorted({str(x) for x in v if v.count(x) > 1})
        if dup:
            raise ValueError(f"duplicate values {dup}; list each value once")
        return v

    def swept(self) -> list[str]:
        return [a for a in AXES if len(getattr(self, a)) > 1]


class DatasetSpec(Frozen):
    """A dataset preset by name (optionally renamed via `preset`), or an inline definition."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    preset: str | None = None
    task: Literal[TASKS] | None = None  # type: ignore[valid-type]
    data: dict[str, Any] | None = None
    overrides: dict[str, Any] = {}


class StudentSpec(Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: dict[str, Any] | None = None


def _flat_train(v: Any) -> Any:
    # A flat TrainConfig mapping means "for every task"; per-task keys are also accepted.
    if isinstance(v, dict) and v and not set(v) <= set(TRAIN_KEYS):
        return {"default": v}
    return v


TrainSections = Annotated[dict[TrainKey, TrainConfig], BeforeValidator(_flat_train)]


class TeacherSpec(Frozen):
    model: dict[str, Any]
    train: TrainSections = {}


class SearchSpec(Frozen):
    strategy: Literal["grid", "greedy"] = "grid"
    order: tuple[str, ...] | None = Field(
        None, description="greedy: the swept axes in the order they are searched"
    )
    sensitivity: bool | None = Field(
        None,
        description="greedy: after the search, change one knob at a time around each pair's "
        "optimum, so that every option gets the same downstream tuning (default: on for greedy)",
    )
    transfer: bool | None = Field(
        None,
        description="run a few candidate single configurations on every pair (the most frequent "
        "per-pair winners, the best by mean validation, the reference study's recommendation); "
        "default: on for greedy, off for grid (where every configuration ran everywhere)",
    )
    transfer_top_k: int = Field(
        2, ge=0, description="transfer: how many of the most frequent per-pair winners to run"
    )
    equivalent_distances: Literal["run_both", "share"] = Field(
        "run_both",
        description="ce and kl have the same gradient (they differ by the teacher's entropy, a "
        "constant), so they train identically; 'share': when both are listed, the second one "
        "listed is the first one's run (one run, not two)",
    )

    def sensitivity_on(self) -> bool:
        return self.strategy == "greedy" if self.sensitivity is None else self.sensitivity

    def transfer_on(self) -> bool:
        return self.strategy == "greedy" if self.transfer is None else self.transfer


class BaselineSpec(Frozen):
    """No-KD baselines tuned like the KD runs: one per learning rate (plus the untuned one)."""

    learning_rate: tuple[Annotated[float, Field(gt=0)], ...] = Field(min_length=1)


class ExecutorSpec(Frozen):
    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(None, description="ray: cluster address; None starts one locally")
    num_cpus: float = Field(1, ge=0)
    num_gpus: float = Field(0, ge=0)
    resources: dict[str, float] = Field({}, description="e.g. {TPU: 4} on a TPU host")
    max_retries: int = Field(2, ge=0, description="retries of a run whose worker died")
    group_size: int = Field(
        1,
        ge=1,
        description="grouped training: at most this many cached-teacher distillation runs that "
        "share dataset, student, shapes and training length train together in one compiled "
        "step (fewer where group_memory_gb does not hold them); 1 trains every run alone",
    )
    group_memory_gb: float | None = Field(
        None,
        gt=0,
        description="memory one group may use on a worker (device memory on an accelerator); "
        "None: 80% of the first local device's memory, or half the host's RAM on a CPU",
    )


@dataclass(frozen=True)
class Dataset:
    name: str
    task: str
    data: dict[str, Any]  # a full DataConfig mapping; local file paths absolute


@dataclass(frozen=True)
class Student:
    name: str
    model: dict[str, Any]


def _as_entries(v: Any) -> Any:
    return [{"name": x} if isinstance(x, str) else x for x in v] if isinstance(v, list) else v


class Manifest(Frozen):
    """One study: datasets × students × KD axes × seeds, how to search and where to run."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    datasets: Annotated[list[DatasetSpec], BeforeValidator(_as_entries)] = Field(min_length=1)
    teacher: TeacherSpec
    students: Annotated[list[StudentSpec], BeforeValidator(_as_entries)] = Field(min_length=1)
    axes: Axes = Axes()
    tau_squared: bool = False
    seeds: tuple[int, ...] = Field((0,), min_length=1)
    train: TrainSections = {}
    search: SearchSpec = SearchSpec()
    baseline: bool | BaselineSpec = Field(
        True,
        description="true: a no-KD run (alpha 0) per pair and seed; {learning_rate: [...]}: "
        "also one per learning rate, so that the baseline is tuned like the KD runs",
    )
    trainer: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
        description="a plug-in trainer 'module:function' called with each run's config as a "
        "dict (the module is looked up next to the manifest, then on sys.path)",
    )
    teacher_mode: Literal["cached", "online"] = "cached"
    executor: ExecutorSpec = ExecutorSpec()
    mesh: MeshConfig | None = None
    _root: Path = PrivateAttr(default=Path("."))

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate values in {list(v)}; list each seed once")
        return v

    @model_validator(mode="after")
    def _names_unique(self) -> Manifest:
        for field in ("datasets", "students"):
            names = [e.name for e in getattr(self, field)]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{field}: duplicate names {dup}; each entry needs its own name")
        return self

    @property
    def root(self) -> Path:
        """The directory of the top-level manifest file (run ids use paths relative to it)."""
        return self._root

    def order(self) -> list[str]:
        return list(self.search.order) if self.search.order else self.axes.swept()

    def baseline_lrs(self) -> list[float | None]:
        """The baselines' learning rates: None is the training settings' own (the untuned
        baseline, always first when there are baselines)."""
        if self.baseline is False:
            return []
        if self.baseline is True:
            return [None]
        return [None, *self.baseline.learning_rate]

    def shared_distances(self) -> dict[str, str]:
        """Distances run as another one's run: {'kl': 'ce'} (the second listed of ce and kl
        maps to the first) with `search.equivalent_distances: share`, else empty."""
        listed = [d for d in self.axes.distance if d in EQUIVALENT_DISTANCES]
        if self.search.equivalent_distances != "share" or len(listed) < 2:
            return {}
        return {listed[1]: listed[0]}

    def warnings(self) -> list[str]:
        """Things that are allowed but probably not meant."""
        out = []
        both = [d for d in self.axes.distance if d in EQUIVALENT_DISTANCES]
        if len(both) == 2 and self.search.equivalent_distances == "run_both":
            out.append(
                f"axes.distance: {both[0]} and {both[1]} train identically (equal gradients: "
                "they differ by the teacher's entropy, a constant); their loss values differ but "
                "their runs do not, so the sweep runs the same training twice. List only one, "
                "or set search.equivalent_distances: share to run it once under both names"
            )
        return out

    def resolved_datasets(self) -> list[Dataset]:
        return [_resolve_dataset(d, f"datasets.{i}")[0] for i, d in enumerate(self.datasets)]

    def resolved_students(self) -> list[Student]:
        out = []
        for s in self.students:
            model = s.model if s.model is not None else {"preset": s.name}
            out.append(Student(s.name, _resolve_model(model)))
        return out

    def teacher_model(self) -> dict[str, Any]:
        return _resolve_model(self.teacher.model)

    def train_for(self, task: str, teacher: bool = False) -> dict[str, Any]:
        """Training settings for a run of `task`: default, then per-task (then the teacher's)."""
        sections = [self.train]
        if teacher:
            sections.append(self.teacher.train)
        out: dict[str, Any] = {}
        for sec in sections:
            for key in ("default", task):
                if key in sec:
                    out.update(sec[key].model_dump(mode="json", exclude_unset=True))
        return out


def _resolve_model(model: dict[str, Any]) -> dict[str, Any]:
    from kdjax.presets import resolve_model

    return resolve_model({"model": model})["model"]


def _resolve_dataset(d: DatasetSpec, where: str) -> tuple[Dataset | None, list[str]]:
    """The dataset's full data config, or the errors (field path: message)."""
    from kdjax.presets import _merge, dataset_presets, resolve_data

    if d.data is not None:
        if d.preset is not None:
            return None, [f"{where}.preset: not used with an inline `data` section"]
        if d.task is None:
            return None, [f"{where}.task: required for an inline dataset; allowed: {TASKS}"]
        task, data, loc = d.task, _merge(d.data, d.overrides), f"{where}.data"
    else:
        presets = dataset_presets()
        name = d.preset or d.name
        if name not in presets:
            field = "preset" if d.preset else "name"
            allowed = ", ".join(sorted(presets))
            msg = f"unknown dataset preset {name!r}; allowed: {allowed} (or an inline `data`)"
            return None, [f"{where}.{field}: {msg}"]
        task = presets[name].task
        if d.task is not None and d.task != task:
            return None, [f"{where}.task: {d.task!r} differs from preset {name!r}'s {task!r}"]
        data = resolve_data({"data": {"preset": name, **d.overrides}})["data"]
        loc = f"{where}.overrides"
    try:
        cfg = DataConfig.model_validate(data)
    except ValidationError as e:
        return None, [f"{loc}.{ln.strip()}" for ln in format_errors(e, "").splitlines()[1:]]
    return Dataset(d.name, task, cfg.model_dump(mode="json")), []


def _semantic_errors(m: Manifest) -> list[str]:
    """Checks that need the registries or several fields at once."""
    errors = []
    for i, d in enumerate(m.datasets):
        errors += _resolve_dataset(d, f"datasets.{i}")[1]
    models = [(f"students.{i}", s.model, s.name) for i, s in enumerate(m.students)]
    models.append(("teacher", m.teacher.model, None))
    for where, model, name in models:
        if model is None and name is not None:
            model = {"preset": name}
            where = f"{where}.name"
        else:
            where = f"{where}.model"
        try:
            TypeAdapter(ModelInit).validate_python(_resolve_model(model))
        except ValidationError as e:
            for ln in format_errors(e, "").splitlines()[1:]:
                tag, _, rest = ln.strip().partition(".")  # drop the `init` union's tag
                errors.append(f"{where}.{rest if tag in _INITS else ln.strip()}")
        except ValueError as e:
            errors.append(f"{where}: {str(e).split(': ', 1)[-1]}")
    for where, sections in (("train", m.train), ("teacher.train", m.teacher.train)):
        for key, sec in sections.items():
            if "seed" in sec.model_fields_set:
                errors.append(f"{where}.{key}.seed: set seeds with the top-level `seeds` list")
    swept = m.axes.swept()
    if m.search.strategy == "grid" and m.search.order is not None:
        errors.append("search.order: only used with strategy 'greedy'")
    if m.search.strategy == "grid" and m.search.sensitivity:
        errors.append(
            "search.sensitivity: only used with strategy 'greedy' (a grid already changes "
            "every knob around every configuration)"
        )
    if m.trainer is not None:
        from kdjax.sweep.plugin import resolve_trainer

        try:
            resolve_trainer(m.trainer, m.root)
        except (ImportError, AttributeError, TypeError) as e:
            errors.append(f"trainer: {e}")
    if m.search.strategy == "greedy" and m.search.order is not None:
        order = list(m.search.order)
        for j, a in enumerate(order):
            if a not in AXES:
                errors.append(f"search.order.{j}: unknown axis {a!r}; allowed: {', '.join(AXES)}")
            elif a not in swept:
                errors.append(
                    f"search.order.{j}: axis {a!r} is not swept (one value, "
                    f"{list(getattr(m.axes, a))}); remove it or give it more values"
                )
            elif order.count(a) > 1:
                errors.append(f"search.order.{j}: axis {a!r} listed twice")
        missing = [a for a in swept if a not in order]
        if missing:
            errors.append(f"search.order: swept axes missing: {missing}; list every swept axis")
    return list(dict.fromkeys(errors))


def load_manifest(path: str | Path) -> Manifest:
    """Read, compose (`include`) and validate a study manifest."""
    path = Path(path)
    raw, _ = read_composed(path)
    return validate_manifest(raw, str(path), root=path.resolve().parent)


def validate_manifest(raw: dict[str, Any], where: str = "manifest", root: Path | None = None):
    """Validate a manifest mapping (includes already merged)."""
    try:
        m = Manifest.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_errors(e, where)) from None
    m._root = (root or Path.cwd()).resolve()
    errors = _semantic_errors(m)
    if errors:
        raise ConfigError("\n".join([f"{where}: invalid manifest", *(f"  {e}" for e in errors)]))
    for w in m.warnings():
        log.warning("%s: %s", where, w)
    return m
