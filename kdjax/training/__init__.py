"""The canonical trainer: a pure jit-compiled step, evaluation and the run loop; grouped
training of several KD configurations in one compiled step."""

from kdjax.training.grouped import train_group
from kdjax.training.loop import TrainingDiverged, train

__all__ = ["TrainingDiverged", "train", "train_group"]
