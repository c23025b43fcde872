"""CoNLL-style column files: one token per line, blank lines between sentences.

The word is the first column and the tag the last, so CoNLL-2003 (word POS chunk NER), two-column
BIO files and anything in between read the same way.
"""

from __future__ import annotations

from pathlib import Path

SUFFIXES = (".conll", ".iob", ".bio", ".txt")


def read_conll(path: str | Path) -> list[dict]:
    """Rows `{"tokens": [...], "ner_tags": [...]}`, one per sentence, in file order.

    `-DOCSTART-` lines are skipped; a line with a single column raises ValueError naming
    `path:line`.
    """
    path = Path(path)
    rows: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []

    def flush() -> None:
        nonlocal tokens, tags
        # Consecutive separators (or a blank line after -DOCSTART-) make no empty sentence.
        if tokens:
            rows.append({"tokens": tokens, "ner_tags": tags})
        tokens, tags = [], []

    # utf-8-sig: files saved by some editors start with a byte-order mark.
    with path.open(encoding="utf-8-sig") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                flush()
                continue
            if line.startswith("-DOCSTART-"):
                # A document boundary is also a sentence boundary, blank line or not.
                flush()
                continue
            parts = line.split()
            if len(parts) < 2:
                raise ValueError(
                    f"{path}:{lineno}: expected a word and a tag separated by whitespace, "
                    f"got {line!r}"
                )
            tokens.append(parts[0])
            tags.append(parts[-1])
    flush()
    return rows
