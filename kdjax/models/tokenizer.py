"""A checkpoint directory's tokenizer, also for repos that hold only `vocab.txt`.

Google's BERT miniatures (google/bert_uncased_L-4_H-256_A-4 and friends) ship `vocab.txt` and a
`config.json` without `model_type` and without tokenizer files; transformers 5 does not guess a
tokenizer from the repo name, so kdjax builds the WordPiece tokenizer from the vocabulary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
WORDPIECE_TYPES = ("bert", "electra")


def vocab_is_uncased(vocab: Path) -> bool:
    """True when no word piece has an upper-case letter (bracketed specials like [CLS] aside):
    an uncased vocabulary was built from lower-cased text, a cased one keeps capitals."""
    with vocab.open(encoding="utf-8") as f:
        for line in f:
            token = line.rstrip("\n")
            if token.startswith("[") and token.endswith("]"):
                continue
            if any(c.isupper() for c in token):
                return False
    return True


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of a local checkpoint directory: its tokenizer files when it has them, else
    a WordPiece tokenizer from `vocab.txt` (lower-casing as `config.json`'s `do_lower_case`
    says, or, when it is silent, as the vocabulary shows)."""
    from transformers import AutoTokenizer, BertTokenizerFast

    path = Path(path)
    cfg_file = path / "config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    vocab = path / "vocab.txt"
    if any((path / f).is_file() for f in TOKENIZER_FILES):
        try:
            return AutoTokenizer.from_pretrained(str(path))
        except (ValueError, OSError, KeyError) as e:
            if not vocab.is_file():
                raise ValueError(f"{path}: its tokenizer files do not load ({e})") from None
            log.warning("%s: tokenizer files do not load (%s); using vocab.txt", path, e)
    if not vocab.is_file():
        raise FileNotFoundError(
            f"{path}: no tokenizer: expected tokenizer.json/tokenizer_config.json or vocab.txt"
        )
    model_type = cfg.get("model_type", "bert")
    if model_type not in WORDPIECE_TYPES:
        raise ValueError(
            f"{path}: only vocab.txt is present, which is a WordPiece vocabulary, but the model "
            f"type is {model_type!r}; add the checkpoint's tokenizer files"
        )
    lower = cfg.get("do_lower_case")
    if lower is None:
        lower = vocab_is_uncased(vocab)
    # Positional: `vocab_file` in transformers 4, `vocab` (a path or a dict) in 5.
    return BertTokenizerFast(
        str(vocab),
        do_lower_case=bool(lower),
        model_max_length=int(cfg.get("max_position_embeddings", 512)),
    )
