"""PCA with whitening, then L2 normalisation: DeepCluster's feature reduction (DESIGN.md step 2).

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

from dcjax.clustering.sharding import AXIS, check_features, shard_rows

HIGHEST = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class PCA:
    mean: jax.Array  # [D]
    components: jax.Array  # [D, dim], columns = eigenvectors, largest eigenvalue first
    eigenvalues: jax.Array  # [dim], of the covariance (divided by N)


def _chunked_cov(x, mask, mean, chunk: int):
    """sum over valid rows of (x - mean)^T (x - mean), `chunk` rows at a time: [D, D]."""
    n, d = x.shape
    xs = x.reshape(n // chunk, chunk, d)
    ms = mask.reshape(n // chunk, chunk)

    def gram(xc, mc):
        centred = jnp.where(mc[:, None], xc - mean, 0.0)
        return jnp.dot(centred.T, centred, precision=HIGHEST)

    def body(acc, inputs):
        return acc + gram(*inputs), None

    # Starting from the first chunk's term keeps the carry device-varying inside shard_map.
    cov, _ = lax.scan(body, gram(xs[0], ms[0]), (xs[1:], ms[1:]))
    return cov


@functools.partial(jax.jit, static_argnames=("mesh", "chunk", "n"))
def _fit(x, mask, *, mesh: Mesh, chunk: int, n: int):
    spec = PartitionSpec(AXIS)

    def sums(x, mask):
        return lax.psum(jnp.sum(jnp.where(mask[:, None], x, 0.0), axis=0), AXIS)

    mean = jax.shard_map(sums, mesh=mesh, in_specs=(spec, spec), out_specs=PartitionSpec())(
        x, mask) / n

    def cov(x, mask, mean):
        return lax.psum(_chunked_cov(x, mask, mean, chunk), AXIS)

    c = jax.shard_map(cov, mesh=mesh, in_specs=(spec, spec, PartitionSpec()),
                      out_specs=PartitionSpec())(x, mask, mean) / n
    return mean, c


def fit_pca(features, dim: int, *, chunk_size: int = 8192, mesh: Mesh | None = None) -> PCA:
    """Fits PCA on `features` [N, D] (numpy, or a jax.Array sharded by rows); keeps `dim` components."""
    n, d = check_features(features, "features")
    if not 1 <= dim <= d:
        raise ValueError(f"PCA dimension {dim} must be between 1 and the feature dimension {d}")
    x, mask, mesh, chunk = shard_rows(features, chunk_size, mesh)
    mean, cov = _fit(x, mask, mesh=mesh, chunk=chunk, n=n)
    eigenvalues, vectors = jnp.linalg.eigh(cov)
    order = jnp.argsort(eigenvalues)[::-1][:dim]
    vectors = vectors[:, order]
    # Sign convention: the largest-magnitude entry of each component is positive.
    pivot = jnp.take_along_axis(vectors, jnp.argmax(jnp.abs(vectors), axis=0)[None], axis=0)
    vectors = vectors * jnp.where(pivot < 0, -1.0, 1.0)
    return PCA(mean=mean, components=vectors, eigenvalues=eigenvalues[order])


@functools.partial(jax.jit, static_argnames=("whiten", "l2_normalize"))
def _apply(x, mean, components, eigenvalues, whiten: bool, l2_normalize: bool):
    y = jnp.dot(x - mean, components, precision=HIGHEST)
    if whiten:
        y = y * lax.rsqrt(jnp.maximum(eigenvalues, 1e-12))
    if l2_normalize:
        y = y / jnp.maximum(jnp.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
    return y


def apply_pca(pca: PCA, features, *, whiten: bool = True, l2_normalize: bool = True) -> jax.Array:
    """[N, D] -> [N, dim]; rows stay sharded as they came."""
    d = pca.mean.shape[0]
    if features.ndim != 2 or features.shape[1] != d:
        raise ValueError(f"features have shape {tuple(features.shape)}, PCA was fit on dimension {d}")
    return _apply(features, pca.mean, pca.components, pca.eigenvalues, whiten, l2_normalize)


def pca_whiten(features, dim: int, *, chunk_size: int = 8192,
               mesh: Mesh | None = None) -> tuple[jax.Array, PCA]:
    """DeepCluster's reduction: PCA to `dim` with whitening, then L2-normalised rows."""
    pca = fit_pca(features, dim, chunk_size=chunk_size, mesh=mesh)
    x = features
    if isinstance(features, np.ndarray):
        x, _, _, _ = shard_rows(features, chunk_size, mesh)
        return apply_pca(pca, x)[: features.shape[0]], pca
    return apply_pca(pca, x), pca

