"""Encoder configuration, read from and written to Hugging Face `config.json` dictionaries."""

from __future__ import annotations

import dataclasses
from typing import Any

MODEL_TYPES = ("bert", "roberta", "electra")
TASKS = ("classification", "token_classification", "extractive_qa")

# The transformers class that loads a saved directory for each task.
HF_ARCHITECTURES = {
    "classification": "ForSequenceClassification",
    "token_classification": "ForTokenClassification",
    "extractive_qa": "ForQuestionAnswering",
}
_HF_CLASS_PREFIX = {"bert": "Bert", "roberta": "Roberta", "electra": "Electra"}

_ACTIVATIONS = (
    "gelu",
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu_fast",
    "relu",
    "silu",
    "swish",
    "tanh",
)


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task: unknown value {task!r}; allowed: {', '.join(TASKS)}")
    return task


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """A BERT-family encoder's shape (BERT, RoBERTa, ELECTRA; MiniLM checkpoints are BERT)."""

    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_token_id: int = 0
    # ELECTRA's embeddings can be narrower than the hidden size (projected up).
    embedding_size: int | None = None
    initializer_range: float = 0.02
    # Head-specific: the classifier dropout (None means hidden_dropout, as in transformers).
    classifier_dropout: float | None = None

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ValueError(
                f"model_type: unsupported value {self.model_type!r}; "
                f"allowed: {', '.join(MODEL_TYPES)}"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads})"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"hidden_act: unsupported value {self.hidden_act!r}; "
                f"allowed: {', '.join(_ACTIVATIONS)}"
            )
        for name in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")

    @property
    def emb_size(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def position_offset(self) -> int:
        # RoBERTa numbers positions from pad_token_id + 1.
        return self.pad_token_id + 1 if self.model_type == "roberta" else 0

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> EncoderConfig:
        model_type = d.get("model_type", "bert")
        emb = d.get("embedding_size")
        return cls(
            model_type=model_type,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=d["num_attention_heads"],
            intermediate_size=d["intermediate_size"],
            max_position_embeddings=d.get("max_position_embeddings", 512),
            type_vocab_size=d.get("type_vocab_size", 2),
            layer_norm_eps=d.get("layer_norm_eps", 1e-12),
            hidden_act=d.get("hidden_act", "gelu"),
            hidden_dropout=d.get("hidden_dropout_prob", 0.1),
            attention_dropout=d.get("attention_probs_dropout_prob", 0.1),
            pad_token_id=d.get("pad_token_id", 1 if model_type == "roberta" else 0),
            embedding_size=emb if emb and emb != d["hidden_size"] else None,
            initializer_range=d.get("initializer_range", 0.02),
            classifier_dropout=d.get("classifier_dropout"),
        )

    def to_hf(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": self.hidden_act,
            "hidden_dropout_prob": self.hidden_dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "pad_token_id": self.pad_token_id,
            "initializer_range": self.initializer_range,
            "classifier_dropout": self.classifier_dropout,
        }
        if self.model_type == "electra":
            d["embedding_size"] = self.emb_size
        return d

    def hf_architecture(self, task: str) -> str:
        return _HF_CLASS_PREFIX[self.model_type] + HF_ARCHITECTURES[check_task(task)]
