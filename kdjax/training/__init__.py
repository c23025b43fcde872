"""The canonical trainer: a pure jit-compiled step, evaluation and the run loop."""

from kdjax.training.loop import TrainingDiverged, train

__all__ = ["TrainingDiverged", "train"]
