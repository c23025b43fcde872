"""Which examples go in which batch, and how much padding each batch keeps.

Short texts padded to the longest one waste most of a CPU's time, so by default batches are
drawn from length-sorted pools (as transformers' `group_by_length`) and trimmed to a length
bucket (a multiple of `BUCKET` tokens): at most seq/BUCKET shapes, each compiled once. Trailing
padding is masked out of attention, so trimming it does not change any real token's output.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

import numpy as np

T = TypeVar("T")

BUCKET = 16
POOL = 16  # batches per length-sorted pool


def bucket_length(longest: int, seq: int) -> int:
    return min(seq, max(BUCKET, -(-int(longest) // BUCKET) * BUCKET))


def epoch_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, group_by_length: bool
) -> list[np.ndarray]:
    """Index arrays of one epoch's batches (the last may be short)."""
    order = rng.permutation(len(lengths))
    if group_by_length:
        pool = batch_size * POOL
        order = np.concatenate(
            [
                chunk[np.argsort(-lengths[chunk], kind="stable")]
                for chunk in np.array_split(order, max(1, -(-len(order) // pool)))
            ]
        )
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:  # keep the length grouping but not a long-to-short order
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def take(arrays: dict[str, np.ndarray], idx: np.ndarray, trim: bool) -> dict[str, np.ndarray]:
    """Rows `idx` of every array, with trailing all-padding columns cut to a bucket length."""
    out = {k: v[idx] for k, v in arrays.items()}
    if trim:
        seq = arrays["attention_mask"].shape[1]
        keep = bucket_length(out["attention_mask"].sum(1).max(), seq)
        out = {k: v[:, :keep] if v.ndim == 2 and v.shape[1] == seq else v for k, v in out.items()}
    return out


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def prefetch(items: Iterable[T], ahead: int = 2) -> Iterator[T]:
    """The items of `items`, in order, produced up to `ahead` in advance by a background
    thread: with `items` a generator of placed batches (`put_batch`), the next batches are
    gathered, padded and sent to the device while the current step runs. An exception in
    the producer is raised here, at the item where it happened."""
    slots: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as e:  # handed to the consumer
            put(_Failed(e))

    thread = threading.Thread(target=produce, name="kdjax-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
