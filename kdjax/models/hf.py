"""Import and export Hugging Face checkpoint directories (config.json + weights: safetensors,
Flax msgpack or pytorch_model.bin, read without torch; see weights.py).

The key map below is the single description of how kdjax parameters correspond to
transformers' PyTorch parameter names; loading and saving both walk it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from kdjax.models.config import HF_ARCHITECTURES, EncoderConfig, check_task
from kdjax.models.encoder import Model, create
from kdjax.models.weights import read_weights

log = logging.getLogger(__name__)

# One entry per parameter: (HF key, NNX param, transpose). Linear weights are [out, in] in
# PyTorch and [in, out] in NNX; embeddings and norms are stored as they are.
Entry = tuple[str, nnx.Param, bool]


def _linear(prefix: str, layer: nnx.Linear) -> Iterator[Entry]:
    yield f"{prefix}.weight", layer.kernel, True
    yield f"{prefix}.bias", layer.bias, False


def _norm(prefix: str, layer: nnx.LayerNorm) -> Iterator[Entry]:
    yield f"{prefix}.weight", layer.scale, False
    yield f"{prefix}.bias", layer.bias, False


def base_entries(model: Model) -> Iterator[Entry]:
    """Encoder parameters, keyed without the `bert.`/`roberta.`/`electra.` prefix."""
    emb = model.encoder.embeddings
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        yield f"embeddings.{name}.weight", getattr(emb, name).embedding, False
    yield from _norm("embeddings.LayerNorm", emb.layer_norm)
    if emb.project is not None:
        yield from _linear("embeddings_project", emb.project)
    for i, layer in enumerate(model.encoder.layers):
        p = f"encoder.layer.{i}"
        yield from _linear(f"{p}.attention.self.query", layer.query)
        yield from _linear(f"{p}.attention.self.key", layer.key)
        yield from _linear(f"{p}.attention.self.value", layer.value)
        yield from _linear(f"{p}.attention.output.dense", layer.attn_out)
        yield from _norm(f"{p}.attention.output.LayerNorm", layer.attn_norm)
        yield from _linear(f"{p}.intermediate.dense", layer.intermediate)
        yield from _linear(f"{p}.output.dense", layer.output)
        yield from _norm(f"{p}.output.LayerNorm", layer.output_norm)
    if model.pooler is not None:
        yield from _linear("pooler.dense", model.pooler)


def head_entries(model: Model) -> Iterator[Entry]:
    """Task-head parameters, keyed as transformers' AutoModelFor... classes name them."""
    if model.task == "extractive_qa":
        yield from _linear("qa_outputs", model.head)
    elif model.head_dense is not None:
        yield from _linear("classifier.dense", model.head_dense)
        yield from _linear("classifier.out_proj", model.head)
    else:
        yield from _linear("classifier", model.head)


def head_output_key(model_type: str, task: str) -> str:
    """The checkpoint key of the head's output-layer weight, [labels, hidden]."""
    if task == "extractive_qa":
        return "qa_outputs.weight"
    if task == "classification" and model_type != "bert":
        return "classifier.out_proj.weight"
    return "classifier.weight"


def _read_config(path: Path) -> dict[str, Any]:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(
            f"{path}: not a Hugging Face checkpoint directory (no config.json). "
            "Point to a directory holding config.json and model.safetensors."
        )
    return json.loads(cfg_file.read_text())


def _normalise_keys(weights: dict[str, np.ndarray], model_type: str) -> dict[str, np.ndarray]:
    """Strip the base prefix and rename legacy LayerNorm gamma/beta; pre-training heads (`cls.*`,
    `lm_head.*`) are left out."""
    out = {}
    prefix = model_type + "."
    for k, v in weights.items():
        if k.startswith(("cls.", "lm_head.")):
            continue
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
            "LayerNorm.beta", "LayerNorm.bias"
        )
        out[k.removeprefix(prefix)] = v
    return out


def _assign(entries: list[Entry], weights: dict[str, np.ndarray], path: Path) -> None:
    for key, param, transpose in entries:
        value = weights[key].T if transpose else weights[key]
        if value.shape != param[...].shape:
            expected = param[...].shape[::-1] if transpose else param[...].shape
            raise ValueError(
                f"{path}: checkpoint tensor {key!r} has shape {tuple(weights[key].shape)}, "
                f"but the model expects {tuple(expected)}"
            )
        # Straight from host memory into the param's own sharding.
        param[...] = jax.device_put(value.astype(param[...].dtype), param[...].sharding)


def from_pretrained(
    path: str | Path,
    task: str,
    num_labels: int | None = None,
    *,
    labels: list[str] | None = None,
    seed: int = 0,
    reinit_head: bool = False,
    sharding: jax.sharding.Sharding | None = None,
) -> Model:
    """Load a local Hugging Face checkpoint directory as a kdjax model for `task`.

    A checkpoint without a head for `task` gets a freshly initialised head (seeded by `seed`).
    `num_labels` defaults to the checkpoint's own label count when it has a head. Params are
    placed in `sharding` (e.g. replicated over a mesh) as they are created.
    """
    check_task(task)
    path = Path(path)
    hf_cfg = _read_config(path)
    cfg = EncoderConfig.from_hf(hf_cfg)
    weights = _normalise_keys(read_weights(path), cfg.model_type)

    # The checkpoint's own head (if any) sets the label count when the caller does not.
    out_key = head_output_key(cfg.model_type, task)
    if labels is None and num_labels is None and task != "extractive_qa" and not reinit_head:
        if out_key in weights:
            num_labels = weights[out_key].shape[0]
            id2label = hf_cfg.get("id2label") or {}
            if len(id2label) == num_labels:
                labels = [id2label[str(i)] for i in range(num_labels)]
    model = create(
        lambda: Model(cfg, task, num_labels, labels=labels, rngs=nnx.Rngs(seed)), sharding
    )

    base = list(base_entries(model))
    missing = [k for k, _, _ in base if k not in weights]
    if model.pooler is not None and missing == ["pooler.dense.weight", "pooler.dense.bias"]:
        log.info("%s: no pooler weights; the pooler starts freshly initialised", path)
        base = base[:-2]
        missing = []
    if missing:
        raise ValueError(
            f"{path}: not a {cfg.model_type} encoder checkpoint of this shape; missing "
            f"{len(missing)} tensors, e.g. {missing[:3]}"
        )
    _assign(base, weights, path)

    head = list(head_entries(model))
    if reinit_head or any(k not in weights for k, _, _ in head):
        log.info("%s: no %s head in the checkpoint; starting a fresh head", path, task)
        return model
    head_rows = weights[out_key].shape[0]
    if head_rows != model.num_labels:
        raise ValueError(
            f"{path}: the checkpoint's {task} head has {head_rows} outputs but num_labels="
            f"{model.num_labels}; pass reinit_head=True to start a fresh head instead"
        )
    _assign(head, weights, path)
    return model


def save_pretrained(model: Model, path: str | Path, tokenizer: Any = None) -> Path:
    """Write `model` as a Hugging Face directory loadable by transformers' AutoModelFor... class."""
    from kdjax.distributed import is_main, to_host

    # Gathered on every process (a collective for params sharded across hosts), written by one.
    values = {
        id(p): to_host(p[...]) for e in (base_entries(model), head_entries(model)) for _, p, _ in e
    }
    if not is_main():
        return Path(path)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    hf = cfg.to_hf()
    hf["architectures"] = [cfg.hf_architecture(model.task)]
    if model.task != "extractive_qa":
        hf["id2label"] = {str(i): name for i, name in enumerate(model.labels)}
        hf["label2id"] = {name: i for i, name in enumerate(model.labels)}
    (path / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")

    tensors: dict[str, np.ndarray] = {}
    prefix = cfg.model_type + "."
    for entries, pre in ((base_entries(model), prefix), (head_entries(model), "")):
        for key, param, transpose in entries:
            value = np.asarray(values[id(param)], dtype=np.float32)
            tensors[pre + key] = np.ascontiguousarray(value.T if transpose else value)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path


def teacher_head_problem(hf_cfg: dict[str, Any], task: str) -> str | None:
    """Why a checkpoint's config.json says it cannot teach `task` (None when it can, or when the
    config does not say): a teacher needs a fine-tuned head for the task, not a pre-training one."""
    archs = hf_cfg.get("architectures") or []
    suffix = HF_ARCHITECTURES[check_task(task)]
    if archs and not any(a.endswith(suffix) for a in archs):
        return (
            f"is a {'/'.join(archs)} checkpoint without a {task} head; a teacher must be "
            f"fine-tuned for the task first (`kdjax teacher`), or be a hub checkpoint ending in "
            f"{suffix} whose id2label matches data.labels"
        )
    if task != "extractive_qa" and not hf_cfg.get("id2label") and not archs:
        return (
            f"has no {task} head (no architectures or id2label in its config.json); fine-tune "
            "it first (`kdjax teacher`)"
        )
    return None
