"""PCA with whitening, then L2 normalisation: DeepCluster's feature reduction (docs/design.md 1.2).

Fit: the mean, then the covariance of the centred features accumulated chunk by chunk by matmul at
float32 accuracy (`Precision.HIGHEST`), summed over every device with `psum` when the features are
sharded by rows, then `eigh`. Apply: centre, project on the top `dim` eigenvectors, scale each
component by eigenvalue^-1/2, L2-normalise each row. Up to the sign of each component and a global
scale (removed by the row normalisation), this is faiss' `PCAMatrix(D, dim, eigen_power=-0.5)`
followed by `normalize_L2`, as the reference uses.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from dcjax.sharding import AXIS, check_features, check_valid, shard_rows

HIGHEST = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class PCA:
    mean: jax.Array  # [D]
    components: jax.Array  # [D, dim], columns = eigenvectors, largest eigenvalue first
    eigenvalues: jax.Array  # [dim], of the covariance (divided by N)


def _chunked_cov(x, mask, mean, chunk: int):
    """sum over valid rows of (x - mean)^T (x - mean), `chunk` rows at a time: [D, D]."""

    def gram(i):
        xc = lax.dynamic_slice_in_dim(x, i * chunk, chunk)
        mc = lax.dynamic_slice_in_dim(mask, i * chunk, chunk)
        centred = jnp.where(mc[:, None], xc - mean, 0.0)
        return jnp.dot(centred.T, centred, precision=HIGHEST)

    # Starting from the first chunk's term keeps the carry device-varying inside shard_map, and
    # slicing in the loop (not `x[1:]`) copies no more than one chunk.
    return lax.fori_loop(1, x.shape[0] // chunk, lambda i, acc: acc + gram(i), gram(0))


@functools.partial(jax.jit, static_argnames=("mesh", "chunk", "n"))
def _fit(x, mask, *, mesh: Mesh, chunk: int, n: int):
    spec = PartitionSpec(AXIS)

    def sums(x, mask):  # a mat-vec, so no masked copy of the features is made
        return lax.psum(jnp.dot(mask.astype(x.dtype), x, precision=HIGHEST), AXIS)

    mean = jax.shard_map(sums, mesh=mesh, in_specs=(spec, spec), out_specs=PartitionSpec())(
        x, mask) / n

    def cov(x, mask, mean):
        return lax.psum(_chunked_cov(x, mask, mean, chunk), AXIS)

    c = jax.shard_map(cov, mesh=mesh, in_specs=(spec, spec, PartitionSpec()),
                      out_specs=PartitionSpec())(x, mask, mean) / n
    return mean, c


def fit_pca(features, dim: int, *, chunk_size: int = 8192, mesh: Mesh | None = None,
            valid: np.ndarray | None = None) -> PCA:
    """Fits PCA on `features` [N, D] (numpy, or a jax.Array sharded by rows); keeps `dim` components.

    `valid` [N] bool: fit on those rows only (padding rows of a feature buffer are left out).
    """
    n = _check(features, dim, valid)
    x, mask, mesh, chunk = shard_rows(features, chunk_size, mesh, valid)
    return _fit_sharded(x, mask, mesh, chunk, n, dim)


def _check(features, dim: int, valid) -> int:
    rows, d = check_features(features, "features")
    n = check_valid(valid, rows)
    if not 1 <= dim <= d:
        raise ValueError(f"PCA dimension {dim} must be between 1 and the feature dimension {d}")
    return n


def _fit_sharded(x, mask, mesh: Mesh, chunk: int, n: int, dim: int) -> PCA:
    mean, cov = _fit(x, mask, mesh=mesh, chunk=chunk, n=n)
    eigenvalues, vectors = jnp.linalg.eigh(cov)
    order = jnp.argsort(eigenvalues)[::-1][:dim]
    vectors = vectors[:, order]
    # Sign convention: the largest-magnitude entry of each component is positive.
    pivot = jnp.take_along_axis(vectors, jnp.argmax(jnp.abs(vectors), axis=0)[None], axis=0)
    vectors = vectors * jnp.where(pivot < 0, -1.0, 1.0)
    return PCA(mean=mean, components=vectors, eigenvalues=eigenvalues[order])


def _project(x, mean, components, eigenvalues, whiten: bool, l2_normalize: bool):
    y = jnp.dot(x - mean, components, precision=HIGHEST)
    if whiten:
        y = y * lax.rsqrt(jnp.maximum(eigenvalues, 1e-12))
    if l2_normalize:
        y = y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
    return y


@functools.partial(jax.jit, static_argnames=("mesh", "chunk", "whiten", "l2_normalize"))
def _apply_sharded(x, mean, components, eigenvalues, *, mesh: Mesh, chunk: int, whiten: bool,
                   l2_normalize: bool):
    """Row-sharded [N, D] -> [N, dim], `chunk` rows at a time per device (no centred copy)."""
    rows, rep = PartitionSpec(AXIS), PartitionSpec()

    def local(x, mean, components, eigenvalues):
        n, d = x.shape
        y = lax.map(lambda xc: _project(xc, mean, components, eigenvalues, whiten, l2_normalize),
                    x.reshape(n // chunk, chunk, d))
        return y.reshape(n, -1)

    return jax.shard_map(local, mesh=mesh, in_specs=(rows, rep, rep, rep), out_specs=rows)(
        x, mean, components, eigenvalues)


def apply_pca(pca: PCA, features, *, whiten: bool = True, l2_normalize: bool = True,
              chunk_size: int = 8192, mesh: Mesh | None = None) -> jax.Array:
    """[N, D] -> [N, dim], computed sharded by rows, `chunk_size` rows at a time per device."""
    d = pca.mean.shape[0]
    if features.ndim != 2 or features.shape[1] != d:
        raise ValueError(f"features have shape {tuple(features.shape)}, PCA was fit on dimension {d}")
    n = features.shape[0]
    x, _, mesh, chunk = shard_rows(features, chunk_size, mesh)
    y = _apply_sharded(x, pca.mean, pca.components, pca.eigenvalues, mesh=mesh, chunk=chunk,
                       whiten=whiten, l2_normalize=l2_normalize)
    return y if y.shape[0] == n else y[:n]


def pca_whiten(features, dim: int, *, chunk_size: int = 8192, mesh: Mesh | None = None,
               valid: np.ndarray | None = None) -> tuple[jax.Array, PCA]:
    """DeepCluster's reduction: PCA to `dim` with whitening, then L2-normalised rows: [N, dim].

    Host features are copied to the devices once, for both the fit and the projection.
    """
    n = _check(features, dim, valid)
    rows = features.shape[0]
    x, mask, mesh, chunk = shard_rows(features, chunk_size, mesh, valid)
    pca = _fit_sharded(x, mask, mesh, chunk, n, dim)
    y = _apply_sharded(x, pca.mean, pca.components, pca.eigenvalues, mesh=mesh, chunk=chunk,
                       whiten=True, l2_normalize=True)
    return (y if y.shape[0] == rows else y[:rows]), pca
