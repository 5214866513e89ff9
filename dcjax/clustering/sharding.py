"""Row sharding of [N, D] feature matrices over a 1-D device mesh, and their input checks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


def default_mesh() -> Mesh:
    """Every device of every process on one 'data' axis."""
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def check_features(x, name: str = "features") -> tuple[int, int]:
    """Raises ValueError unless `x` is a non-empty [N, D] array of finite floats; returns (N, D)."""
    if getattr(x, "ndim", None) != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] array, got shape {getattr(x, 'shape', None)}")
    n, d = x.shape
    if n == 0 or d == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if isinstance(x, np.ndarray):
        bad = int(np.count_nonzero(~np.isfinite(x).all(axis=1)))
    else:
        bad = int(jax.jit(lambda a: jnp.sum(~jnp.all(jnp.isfinite(a), axis=1)))(x))
    if bad:
        raise ValueError(f"{name} has {bad} of {n} rows with NaN or inf values")
    return n, d


def shard_rows(x, chunk_size: int, mesh: Mesh | None = None):
    """Pads `x` [N, D] to a multiple of devices x chunk rows and shards it on the mesh's axis.

    Returns (x [N_pad, D] float32, mask [N_pad] bool (True on real rows), mesh, chunk), where chunk
    (<= chunk_size) is the number of rows each device processes at once.
    """
    mesh = mesh or default_mesh()
    ndev = mesh.devices.size
    n = x.shape[0]
    chunk = max(1, min(chunk_size, math.ceil(n / ndev)))
    n_pad = math.ceil(n / (ndev * chunk)) * ndev * chunk
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    mask = np.arange(n_pad) < n
    if isinstance(x, np.ndarray):
        x = np.pad(x.astype(np.float32, copy=False), ((0, n_pad - n), (0, 0)))
        return jax.device_put(x, sharding), jax.device_put(mask, sharding), mesh, chunk
    pad = jax.jit(lambda a: jnp.pad(a.astype(jnp.float32), ((0, n_pad - n), (0, 0))),
                  out_shardings=sharding)
    return pad(x), jax.device_put(mask, sharding), mesh, chunk
