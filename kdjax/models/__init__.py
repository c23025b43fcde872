"""BERT-family encoders (Flax NNX) with Hugging Face import and export."""

from kdjax.models.config import TASKS, EncoderConfig
from kdjax.models.encoder import Model
from kdjax.models.hf import from_pretrained, save_pretrained
from kdjax.models.students import from_teacher_layers, random_student

__all__ = [
    "TASKS",
    "EncoderConfig",
    "Model",
    "from_pretrained",
    "save_pretrained",
    "from_teacher_layers",
    "random_student",
]
