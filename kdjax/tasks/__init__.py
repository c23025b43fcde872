"""Task families, by the name used in configs: classification (incl. NLI), token_classification
(NER) and extractive_qa."""

from __future__ import annotations

from kdjax.tasks.base import MODEL_INPUTS, Encoded, Task
from kdjax.tasks.classification import Classification


def get_task(name: str) -> Task:
    # Imported lazily so that one task's dependencies never burden another's.
    if name == "classification":
        return Classification()
    if name == "token_classification":
        from kdjax.tasks.token_classification import TokenClassification

        return TokenClassification()
    if name == "extractive_qa":
        from kdjax.tasks.extractive_qa import ExtractiveQA

        return ExtractiveQA()
    raise ValueError(
        f"task: unknown value {name!r}; allowed: classification, token_classification, "
        "extractive_qa"
    )


__all__ = ["MODEL_INPUTS", "Encoded", "Task", "get_task"]
