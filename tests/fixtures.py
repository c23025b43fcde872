"""Shared test inputs: the shipped fixture files and tiny model settings."""

from pathlib import Path

DATA = Path(__file__).parent / "data"

# Sentiment sentences (neg/pos) in the three local formats a classification source reads.
SENTIMENT = {
    "source": "files",
    "files": {
        "train": str(DATA / "sentiment_train.csv"),
        "validation": str(DATA / "sentiment_validation.jsonl"),
        "test": str(DATA / "sentiment_test.jsonl"),
    },
    "text_column": "sentence",
    "label_column": "sentiment",
}

CONLL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def tiny_model(layers: int = 1, heads: int = 2) -> dict:
    """A random student small enough for tests: hidden 32, the MiniLM tokenizer."""
    return {
        "init": "random",
        "layers": layers,
        "hidden": 32,
        "heads": heads,
        "intermediate": 64,
        "tokenizer": "all-minilm-l6-v2",
    }
