"""Dataset presets: named, validated data settings under `experiments/datasets/`.

A run config refers to one with `data: {preset: NAME, ...}`; keys given next to `preset`
override the preset's (nested mappings merge), e.g. to point the preset at local files.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from kdjax.config import DataConfig, Frozen, format_errors
from kdjax.models.config import TASKS

PRESET_DIR = Path(__file__).resolve().parent.parent / "experiments" / "datasets"
METRICS = {"classification": "accuracy", "token_classification": "f1", "extractive_qa": "f1"}


class DatasetPreset(Frozen):
    name: str
    task: Literal[TASKS]  # type: ignore[valid-type]
    family: str = Field(description="the study's task family: classification, nli, ner or qa")
    metric: str = Field(description="the metric reported for this dataset")
    source: str = Field(description="where the data comes from, in words")
    split_note: str = Field(description="how train/validation/test are obtained")
    evidence: str = Field(
        description="where the source's repo, files, features and label order were checked"
    )
    local_recipe: str | None = Field(
        None, description="how to run the preset from local files when the hub source fails"
    )
    data: DataConfig


@functools.cache
def dataset_presets(directory: Path = PRESET_DIR) -> dict[str, DatasetPreset]:
    """All presets in `directory`, by name (file stem), validated."""
    out = {}
    for path in sorted(directory.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        try:
            preset = DatasetPreset.model_validate(raw)
        except ValidationError as e:
            raise ValueError(format_errors(e, str(path))) from None
        if preset.name != path.stem:
            raise ValueError(f"{path}: name {preset.name!r} must match the file name")
        out[preset.name] = preset
    return out


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# Structured local formats carry their own column names (CoNLL: tokens / ner_tags; SQuAD JSON:
# id / question / context / answers in SQuAD layout), so a preset's hub column names give way.
_FILE_COLUMNS = {
    "token_classification": {"tokens_column": "tokens", "tags_column": "ner_tags"},
    "extractive_qa": {
        "id_column": "id",
        "question_column": "question",
        "context_column": "context",
        "answers_column": "answers",
        "answers_format": "squad",
    },
}


STUDENTS_FILE = PRESET_DIR.parent / "students.yaml"


class StudentPreset(Frozen):
    name: str
    description: str
    model: dict[str, Any]


@functools.cache
def student_presets(path: Path = STUDENTS_FILE) -> dict[str, StudentPreset]:
    """Student presets by name, each a run config's `model` section (validated on use)."""
    raw = yaml.safe_load(path.read_text()) or {}
    out = {}
    for name, body in raw.items():
        try:
            out[name] = StudentPreset.model_validate({"name": name, **body})
        except ValidationError as e:
            raise ValueError(format_errors(e, f"{path}: {name}")) from None
    return out


def resolve_model(run: dict[str, Any]) -> dict[str, Any]:
    """A run config dict with `model.preset` replaced by that student preset's model section."""
    model = run.get("model")
    if not isinstance(model, dict) or "preset" not in model:
        return run
    presets = student_presets()
    name = model["preset"]
    if name not in presets:
        raise ValueError(
            f"model.preset: unknown student preset {name!r}; allowed: {', '.join(presets)}"
        )
    extra = set(model) - {"preset"}
    if extra:
        raise ValueError(f"model: {sorted(extra)} cannot be combined with a preset")
    return {**run, "model": dict(presets[name].model)}


def resolve_data(run: dict[str, Any]) -> dict[str, Any]:
    """A run config dict with `data.preset` expanded (and `task` taken from the preset)."""
    data = run.get("data")
    if not isinstance(data, dict) or "preset" not in data:
        return run
    presets = dataset_presets()
    name = data["preset"]
    if name not in presets:
        raise ValueError(
            f"data.preset: unknown preset {name!r}; allowed: {', '.join(sorted(presets))}"
        )
    preset = presets[name]
    task = run.get("task", preset.task)
    if task != preset.task:
        raise ValueError(f"task: {task!r} differs from preset {name!r}'s task {preset.task!r}")
    base = preset.data.model_dump(mode="json", exclude_unset=True)
    over = {k: v for k, v in data.items() if k != "preset"}
    if over.get("source", base.get("source")) != base.get("source"):
        base.pop("hub", None)  # pointing the preset elsewhere drops its hub source
        if over.get("source") == "files":
            base.update(_FILE_COLUMNS.get(preset.task, {}))
    return {**run, "task": task, "data": _merge(base, over)}
