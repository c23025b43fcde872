"""The device mesh and how batches are padded and placed on it."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from kdjax.config import MeshConfig


def make_mesh(cfg: MeshConfig | None = None, devices=None) -> Mesh:
    """A `data` × `fsdp` mesh. Batches are split over both axes; params and optimizer state
    are sharded over `fsdp` (fully replicated when it is 1). `data: -1` takes all devices
    left after `fsdp`."""
    cfg = cfg or MeshConfig()
    devices = list(devices if devices is not None else jax.devices())
    if cfg.fsdp < 1 or len(devices) % cfg.fsdp:
        raise ValueError(f"mesh.fsdp: must divide the {len(devices)} devices here, got {cfg.fsdp}")
    data = len(devices) // cfg.fsdp if cfg.data == -1 else cfg.data
    if not 1 <= data * cfg.fsdp <= len(devices):
        raise ValueError(
            f"mesh.data: must be -1 or in [1, {len(devices) // cfg.fsdp}] here (with fsdp "
            f"{cfg.fsdp}), got {cfg.data}"
        )
    grid = np.asarray(devices[: data * cfg.fsdp]).reshape(data, cfg.fsdp)
    # Auto axes: the compiler propagates shardings from the inputs we place explicitly.
    return Mesh(grid, ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """Rows split over every device of the mesh."""
    return NamedSharding(mesh, P(("data", "fsdp")))


def param_sharding(mesh: Mesh):
    """The placement rule for params and optimizer state: each array is split over `fsdp` along
    its largest dimension that divides evenly; small or indivisible arrays are replicated."""
    n = mesh.shape["fsdp"]

    def rule(leaf) -> NamedSharding:
        shape = getattr(leaf, "shape", ())
        if n == 1 or not shape:
            return NamedSharding(mesh, P())
        dims = [d for d in np.argsort(shape)[::-1] if shape[d] % n == 0 and shape[d] >= n]
        if not dims:
            return NamedSharding(mesh, P())
        spec = [None] * len(shape)
        spec[dims[0]] = "fsdp"
        return NamedSharding(mesh, P(*spec))

    return rule


def padded_size(n: int, mesh: Mesh) -> int:
    d = mesh.size
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
    sharding = data_sharded(mesh)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    # Several processes: each holds the same global batch order and contributes only the rows
    # its own devices hold (contiguous, as the mesh lists devices process by process).
    rows = len(batch["weight"])
    spans = sharding.addressable_devices_indices_map((rows,)).values()
    lo, hi = min(s[0].start or 0 for s in spans), max(s[0].stop or rows for s in spans)
    return {
        k: jax.make_array_from_process_local_data(sharding, v[lo:hi], v.shape)
        for k, v in batch.items()
    }
