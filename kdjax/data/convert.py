"""Converters from datasets' original release formats to files `data.source: files` reads.

For when a hub copy cannot be used (no network on the training machine, a hub repo that
changed): each preset's `local_recipe` says which converter its raw files need.

- TREC (cogcomp.seas.upenn.edu/Data/QA/QC/): `train_5500.label`, `TREC_10.label`, one question a
  line as `COARSE:fine question words ?`, in Latin-1.
- WNUT-17 (github.com/leondz/emerging_entities_17): CoNLL-style word<TAB>tag files; the test
  file is `emerging.test.annotated`, whose name kdjax does not take for a CoNLL file.
- OntoNotes 5 as tner releases it: JSON lines `{"tokens": [...], "tags": [ints]}`, the ints
  indexing the preset's label list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from kdjax.data.conll import read_conll

TREC_COARSE = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")


def _text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # the TREC files are Latin-1
        return raw.decode("latin-1")


def convert_trec(src: str | Path, out: str | Path) -> int:
    """TREC label file -> JSON lines {"text", "coarse_label", "fine_label"}; returns the count."""
    src, out = Path(src), Path(out)
    rows = []
    for i, line in enumerate(_text(src).splitlines(), 1):
        if not line.strip():
            continue
        label, _, text = line.partition(" ")
        coarse, sep, fine = label.partition(":")
        if not sep or coarse not in TREC_COARSE or not text.strip():
            raise ValueError(
                f"{src}:{i}: expected 'COARSE:fine question ...' with COARSE one of "
                f"{', '.join(TREC_COARSE)}, got {line[:60]!r}"
            )
        rows.append({"text": text.strip(), "coarse_label": coarse, "fine_label": label})
    _write_jsonl(out, rows)
    return len(rows)


def convert_conll(src: str | Path, out: str | Path) -> int:
    """A CoNLL-style file under any name (e.g. WNUT-17's `emerging.test.annotated`) -> a
    `.conll` file of word<TAB>tag lines; returns the sentence count."""
    src, out = Path(src), Path(out)
    if out.suffix != ".conll":
        raise ValueError(f"{out}: the output must end in .conll")
    rows = read_conll(src)
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            for token, tag in zip(row["tokens"], row["ner_tags"], strict=True):
                f.write(f"{token}\t{tag}\n")
            f.write("\n")
    return len(rows)


def convert_int_tags(src: str | Path, out: str | Path, labels: Sequence[str]) -> int:
    """JSON lines with integer tags (tner's OntoNotes 5: {"tokens", "tags"}) -> JSON lines
    {"tokens", "ner_tags"} with the tags named through `labels` (id order)."""
    src, out = Path(src), Path(out)
    rows = []
    for i, line in enumerate(_text(src).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            tokens, tags = row["tokens"], row["tags"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(
                f'{src}:{i}: expected {{"tokens": [...], "tags": [...]}} ({e})'
            ) from None
        if len(tokens) != len(tags):
            raise ValueError(f"{src}:{i}: {len(tokens)} tokens but {len(tags)} tags")
        bad = [t for t in tags if not isinstance(t, int) or not 0 <= t < len(labels)]
        if bad:
            raise ValueError(f"{src}:{i}: tag {bad[0]!r} is not an id of the {len(labels)} labels")
        rows.append({"tokens": tokens, "ner_tags": [labels[t] for t in tags]})
    _write_jsonl(out, rows)
    return len(rows)


def _write_jsonl(out: Path, rows: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def convert(kind: str, src: str, out: str) -> str:
    """`kdjax convert KIND SRC OUT`: one raw file to a file the presets read."""
    if kind == "trec":
        return f"{out}: {convert_trec(src, out)} questions"
    if kind == "wnut17":
        return f"{out}: {convert_conll(src, out)} sentences"
    if kind == "ontonotes":
        from kdjax.presets import dataset_presets

        labels = dataset_presets()["ontonotes5"].data.labels
        return f"{out}: {convert_int_tags(src, out, labels)} sentences"
    raise ValueError(f"convert: unknown kind {kind!r}; allowed: trec, wnut17, ontonotes")
