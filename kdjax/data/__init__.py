"""Data: sources (files, hub, offline wheels), splits and tokenization per task."""

from kdjax.data.dataset import Dataset, build_dataset

__all__ = ["Dataset", "build_dataset"]
