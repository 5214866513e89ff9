"""The device mesh and its shardings, for every layer above: one 1-D 'data' axis over every device
of every process; `rows(mesh)` splits an array's first axis over it, `replicated(mesh)` copies it
to each device. Also the row-sharding of [N, D] feature matrices and their input checks, and the
host's available memory (for choices of where data goes)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


def default_mesh() -> Mesh:
    """Every device of every process on one 'data' axis."""
    return Mesh(np.asarray(jax.devices()), (AXIS,))


def rows(mesh: Mesh) -> NamedSharding:
    """First axis split over the mesh's devices (a batch, or the rows of a feature matrix)."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh (train state, centroids)."""
    return NamedSharding(mesh, PartitionSpec())


def check_valid(valid: np.ndarray | None, n: int) -> int:
    """Number of rows that count; `valid` [N] bool marks them (None: all)."""
    if valid is None:
        return n
    valid = np.asarray(valid)
    if valid.shape != (n,) or valid.dtype != bool:
        raise ValueError(f"valid must be a bool array of shape ({n},), got {valid.dtype} {valid.shape}")
    return int(valid.sum())


def check_features(x, name: str = "features") -> tuple[int, int]:
    """Raises ValueError unless `x` is a non-empty [N, D] array of finite floats; returns (N, D)."""
    if getattr(x, "ndim", None) != 2:
        raise ValueError(f"{name} must be a 2-D [N, D] array, got shape {getattr(x, 'shape', None)}")
    n, d = x.shape
    if n == 0 or d == 0:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if isinstance(x, np.ndarray):  # in row blocks: no N x D boolean temporary
        step = max(1, (1 << 24) // d)
        bad = sum(int(np.count_nonzero(~np.isfinite(x[i:i + step]).all(axis=1)))
                  for i in range(0, n, step))
    else:
        bad = int(_count_nonfinite_rows(x))
    if bad:
        raise ValueError(f"{name} has {bad} of {n} rows with NaN or inf values")
    return n, d


@jax.jit
def _count_nonfinite_rows(a):
    # Module-level so that it compiles once per shape, not at every call.
    return jnp.sum(~jnp.all(jnp.isfinite(a), axis=1))


@functools.lru_cache(maxsize=32)
def _pad_rows(n_pad: int, sharding: NamedSharding):
    """A jitted pad of [N, D] rows to n_pad float32 rows laid out by `sharding` (cached: one
    compile per shape, not one per call)."""
    return jax.jit(lambda a: jnp.pad(a.astype(jnp.float32), ((0, n_pad - a.shape[0]), (0, 0))),
                   out_shardings=sharding)


def row_chunk(n: int, ndev: int, chunk_size: int) -> int:
    """Rows per device per step: a divisor of N / devices in [chunk_size / 2, chunk_size] when
    there is one (no padding copy of a large array), else chunk_size (or less for small N)."""
    per_device = math.ceil(n / ndev)
    if per_device <= chunk_size:
        return max(1, per_device)
    if n % ndev == 0:
        for c in range(chunk_size, chunk_size // 2 - 1, -1):
            if per_device % c == 0:
                return c
    return chunk_size


def put(x, sharding: NamedSharding):
    """jax.device_put of host values (a pytree of arrays), also when `sharding` spans devices of
    several processes: every process passes the same value and keeps its own shards."""
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)

    def one(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(one, x)


def shard_rows(x, chunk_size: int, mesh: Mesh | None = None, valid: np.ndarray | None = None):
    """Pads `x` [N, D] to a multiple of devices x chunk rows and shards it on the mesh's axis.

    Returns (x [N_pad, D] float32, mask [N_pad] bool, mesh, chunk): mask is True on the rows that
    count (`valid` [N] when given, else every row of `x`) and False on padding; chunk (<=
    chunk_size) is the number of rows each device processes at once.
    """
    mesh = mesh or default_mesh()
    ndev = mesh.devices.size
    n = x.shape[0]
    chunk = row_chunk(n, ndev, chunk_size)
    n_pad = math.ceil(n / (ndev * chunk)) * ndev * chunk
    sharding = rows(mesh)
    mask = np.zeros(n_pad, bool)
    mask[:n] = True if valid is None else np.asarray(valid, bool)
    if isinstance(x, np.ndarray):
        x = x.astype(np.float32, copy=False)
        if n_pad != n:
            x = np.pad(x, ((0, n_pad - n), (0, 0)))
        return put(x, sharding), put(mask, sharding), mesh, chunk
    if n_pad == n and x.dtype == jnp.float32 and x.sharding.is_equivalent_to(sharding, 2):
        return x, put(mask, sharding), mesh, chunk
    return _pad_rows(n_pad, sharding)(x), put(mask, sharding), mesh, chunk


def available_memory() -> int | None:
    """Bytes of host memory available to a new allocation (Linux' MemAvailable), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
