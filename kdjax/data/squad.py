"""SQuAD-format JSON files (the official train/dev layout) as flat question rows."""

from __future__ import annotations

import json
from pathlib import Path

_EXPECTED = (
    '{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", '
    '"answers": [{"text", "answer_start"}]}]}]}]}'
)


def _shape_error(path: Path, where: str, problem: str) -> ValueError:
    return ValueError(f"{path}: not SQuAD-format JSON ({where}: {problem}); expected {_EXPECTED}")


def read_squad_json(path: str | Path) -> list[dict]:
    """One row per question, laid out as the Hugging Face `squad` dataset:
    {"id", "title", "context", "question", "answers": {"text": [...], "answer_start": [...]}}."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); expected {_EXPECTED}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise _shape_error(path, "top level", 'no "data" list')
    rows = []
    for a, article in enumerate(doc["data"]):
        where = f"data[{a}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise _shape_error(path, where, 'no "paragraphs" list')
        title = article.get("title", "")
        for p, para in enumerate(article["paragraphs"]):
            where = f"data[{a}].paragraphs[{p}]"
            if not isinstance(para, dict) or not isinstance(para.get("context"), str):
                raise _shape_error(path, where, 'no "context" string')
            if not isinstance(para.get("qas"), list):
                raise _shape_error(path, where, 'no "qas" list')
            for q, qa in enumerate(para["qas"]):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                if not isinstance(qa, dict) or not {"id", "question"} <= qa.keys():
                    raise _shape_error(path, where, 'needs "id" and "question"')
                answers = qa.get("answers", [])
                if not isinstance(answers, list) or not all(
                    isinstance(x, dict) and {"text", "answer_start"} <= x.keys() for x in answers
                ):
                    raise _shape_error(path, where, '"answers" must be [{"text", "answer_start"}]')
                rows.append(
                    {
                        "id": str(qa["id"]),
                        "title": title,
                        "context": para["context"],
                        "question": qa["question"],
                        "answers": {
                            "text": [x["text"] for x in answers],
                            "answer_start": [int(x["answer_start"]) for x in answers],
                        },
                    }
                )
    return rows
