"""Checkpoints from the Hugging Face hub: only the files kdjax reads, one weight format.

A hub repo often holds the same weights several times (google-bert/bert-large-uncased:
model.safetensors, pytorch_model.bin, flax_model.msgpack, tf_model.h5, ...; the BERT miniatures:
pytorch_model.bin, flax_model.msgpack and a TF checkpoint). kdjax lists the repo, picks the best
format it reads (weights.WEIGHT_FILES order) and downloads that one, config.json and the
tokenizer files.
"""

from __future__ import annotations

import re
from pathlib import Path

from kdjax.models.weights import SHARD_INDEXES, WEIGHT_FILES, weight_files

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_hub_id(name: str) -> bool:
    """`owner/name` or a legacy bare `name` (no leading `.` or `/`): a hub repo id."""
    return bool(_HUB_ID.match(name)) and ".." not in name


def checkpoint_files(repo_files: list[str], repo_id: str) -> list[str]:
    """The files to download from a repo with these files (top-level ones only)."""
    top = {f for f in repo_files if "/" not in f}
    if "config.json" not in top:
        raise FileNotFoundError(
            f"hub model {repo_id}: no config.json; not a transformers checkpoint"
        )
    weights = weight_files(top)
    if not weights:
        raise FileNotFoundError(
            f"hub model {repo_id}: none of {', '.join(WEIGHT_FILES)} (or shards) in the repo; "
            f"files: {', '.join(sorted(top)[:12])}"
        )
    index = [
        i
        for i, single in SHARD_INDEXES.items()
        if i in top and weights[0].startswith(single.rsplit(".", 1)[0] + "-")
    ]
    return ["config.json", *(f for f in TOKENIZER_FILES if f in top), *index, *weights]


def download_checkpoint(repo_id: str, revision: str | None = None) -> Path:
    """A local directory holding `repo_id`'s config, tokenizer files and one weight format.

    Offline (HF_HUB_OFFLINE=1 or no network) it falls back to what the local cache holds."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    try:
        files = HfApi().list_repo_files(repo_id, revision=revision)
    except Exception as online_error:  # offline, no network, unknown or gated repo
        try:
            return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
        except Exception:
            raise FileNotFoundError(
                f"hub model {repo_id}: cannot list the repo ({type(online_error).__name__}: "
                f"{online_error}) and it is not in the local cache"
            ) from None
    paths = [
        Path(hf_hub_download(repo_id, f, revision=revision))
        for f in checkpoint_files(files, repo_id)
    ]
    return paths[0].parent
