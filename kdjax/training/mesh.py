"""The device mesh and how batches are padded and placed on it."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from kdjax.config import MeshConfig


def make_mesh(cfg: MeshConfig | None = None, devices=None) -> Mesh:
    """A 1-D `data` mesh over `cfg.data` devices (-1: all)."""
    cfg = cfg or MeshConfig()
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices) if cfg.data == -1 else cfg.data
    if not 1 <= n <= len(devices):
        raise ValueError(f"mesh.data: must be -1 or in [1, {len(devices)}] here, got {cfg.data}")
    # Auto axes: the compiler propagates shardings from the inputs we place explicitly.
    return Mesh(np.asarray(devices[:n]), ("data",), axis_types=(AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def padded_size(n: int, mesh: Mesh) -> int:
    d = mesh.shape["data"]
    return -(-n // d) * d


def pad_batch(arrays: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Pad every array to `size` rows and add `weight` (1 real, 0 padding) so that padded rows
    contribute nothing to losses, gradients or metrics."""
    n = len(next(iter(arrays.values())))
    out = {
        k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
        for k, v in arrays.items()
    }
    weight = np.zeros(size, np.float32)
    weight[:n] = 1.0
    out["weight"] = weight
    return out


def put_batch(
    arrays: dict[str, np.ndarray], mesh: Mesh, size: int | None = None
) -> dict[str, jax.Array]:
    """Pad to `size` rows (default: as many as given), rounded up to a multiple of the data-axis
    size, and shard the rows over that axis."""
    n = len(next(iter(arrays.values())))
    batch = pad_batch(arrays, padded_size(max(n, size or n), mesh))
    return jax.device_put(batch, data_sharded(mesh))
