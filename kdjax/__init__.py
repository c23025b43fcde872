"""kdjax: empirical studies of knowledge-distillation configuration choices, in JAX/Flax."""

__version__ = "0.1.0"
