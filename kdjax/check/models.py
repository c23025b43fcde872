"""Preflight of a teacher or student: where its checkpoint is, its config, weights and tokenizer."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from kdjax.check import FAIL, OK, UNVERIFIED, Result, mb


def _describe(path: Path, model: dict[str, Any], need_weights: bool) -> tuple[str, Any]:
    """Validate a local checkpoint directory; (summary, tokenizer vocab). Raises ValueError /
    FileNotFoundError with the problem."""
    from kdjax.models.config import EncoderConfig
    from kdjax.models.weights import weight_files

    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path}: no config.json")
    hf = json.loads(cfg_file.read_text())
    cfg = EncoderConfig.from_hf(hf)
    parts = [f"{cfg.model_type} L{cfg.num_layers}/H{cfg.hidden_size}"]
    if need_weights:
        files = weight_files([p.name for p in path.iterdir() if p.is_file()])
        if not files:
            raise FileNotFoundError(f"{path}: no weight file (safetensors, msgpack or .bin)")
        size = sum((path / f).stat().st_size for f in files)
        parts.append(f"weights {files[0]}{'...' if len(files) > 1 else ''} ({mb(size)})")
    if model.get("init") == "teacher_layers":
        bad = [i for i in model.get("layers", ()) if not 0 <= i < cfg.num_layers]
        if bad:
            raise ValueError(f"layers {bad} are outside the checkpoint's {cfg.num_layers} layers")
    kind, vocab = _tokenizer(str(path))
    if len(vocab) > cfg.vocab_size:
        raise ValueError(f"tokenizer has {len(vocab)} tokens but the model only {cfg.vocab_size}")
    parts.append(f"tokenizer {kind} ({len(vocab)} tokens)")
    return ", ".join(parts), vocab


@functools.lru_cache(maxsize=16)
def _tokenizer(path: str) -> tuple[str, dict[str, int]]:
    """(class name, vocabulary) of a checkpoint's tokenizer; students cut from one checkpoint
    load it once."""
    from kdjax.models.tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    return type(tok).__name__, tok.get_vocab()


def _hub_files(repo: str) -> tuple[list[str], dict[str, int | None]]:
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo, files_metadata=True)
    sizes = {s.rfilename: s.size for s in info.siblings or []}
    return list(sizes), sizes


def check_model(
    role: str, name: str, model: dict[str, Any], online: bool, why: str
) -> tuple[Result, Any]:
    """(result, tokenizer vocab or None) for a manifest's teacher or student model section."""
    from kdjax.data.sources import LOCAL_CHECKPOINTS, resolve_checkpoint
    from kdjax.models.hub import TOKENIZER_FILES, checkpoint_files, looks_like_hub_id

    init = model.get("init")
    source = model.get("tokenizer") if init == "random" else model.get("path")
    need_weights = init != "random"
    label = f"{source}" + (" (tokenizer only)" if init == "random" else "")
    try:
        local = Path(str(source)).expanduser()
        if local.is_dir() or source in LOCAL_CHECKPOINTS:
            path = resolve_checkpoint(source)
            summary, vocab = _describe(path, model, need_weights)
            return Result(role, name, OK, f"{label}: {summary}"), vocab
        if not looks_like_hub_id(str(source)):
            return Result(
                role,
                name,
                FAIL,
                f"{source}: not a directory, a known name "
                f"({', '.join(LOCAL_CHECKPOINTS)}) or a hub id",
            ), None
        if online:
            from huggingface_hub import hf_hub_download

            files, sizes = _hub_files(source)
            wanted = checkpoint_files(files, source)
            small = [f for f in wanted if f == "config.json" or f in TOKENIZER_FILES]
            path = Path(hf_hub_download(source, small[0])).parent
            for f in small[1:]:
                hf_hub_download(source, f)
            summary, vocab = _describe(path, model, need_weights=False)
            weights = [f for f in wanted if f not in small and not f.endswith(".json")]
            if need_weights:
                size = sum(sizes.get(f) or 0 for f in weights)
                summary += f"; will download {', '.join(weights[:2])} ({mb(size)})"
            return Result(role, name, OK, f"hub {label}: {summary}"), vocab
        from huggingface_hub import constants, try_to_load_from_cache

        # The cache folder read now (HF_HUB_CACHE), not when huggingface_hub was imported.
        cached = try_to_load_from_cache(source, "config.json", cache_dir=constants.HF_HUB_CACHE)
        if not isinstance(cached, str):
            return Result(
                role,
                name,
                UNVERIFIED,
                f"hub {source}: {why}, and it is not in the "
                "local hub cache; could not check its files, config or tokenizer",
            ), None
        summary, vocab = _describe(Path(cached).parent, model, need_weights)
        return Result(role, name, OK, f"hub {label} (local cache, offline): {summary}"), vocab
    except Exception as e:  # every problem becomes this item's line
        msg = str(e).replace("\n", "; ")
        if not online and need_weights and "no weight file" in msg:
            return Result(role, name, UNVERIFIED, f"{label}: {why}; cached without weights"), None
        return Result(role, name, FAIL, f"{label}: {msg}"), None


def check_tokenizers(vocabs: dict[str, Any]) -> Result:
    """Teacher and students must tokenise alike: the teacher's logits are per student token."""
    known = {k: v for k, v in vocabs.items() if v is not None}
    if len(known) < 2:
        return Result(
            "tokenizers",
            "shared",
            UNVERIFIED if len(known) < len(vocabs) else OK,
            f"compared {len(known)} of {len(vocabs)} tokenizers",
        )
    first, ref = next(iter(known.items()))
    differ = [k for k, v in known.items() if v != ref]
    if differ:
        return Result(
            "tokenizers",
            "shared",
            FAIL,
            f"{', '.join(differ)} tokenise differently "
            f"from {first}; teacher and students must share a vocabulary",
        )
    missing = len(vocabs) - len(known)
    status = UNVERIFIED if missing else OK
    extra = f"; {missing} not compared" if missing else ""
    return Result("tokenizers", "shared", status, f"{len(known)} share one vocabulary{extra}")
