"""DeepCluster's clustering half: PCA-whitening, k-means (JAX or faiss), the epoch sampler."""

from __future__ import annotations

import logging
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from dcjax.clustering.faiss_backend import faiss_available, kmeans_faiss
from dcjax.clustering.kmeans import PRECISIONS, KMeansResult, assign, kmeans, to_host
from dcjax.clustering.pca import PCA, apply_pca, fit_pca, pca_whiten
from dcjax.clustering.sampler import natural_sampler, sample_epoch, uniform_label_sampler

BACKENDS = ("jax", "faiss", "auto")


def run_kmeans(features, k: int, *, backend: str = "jax", iterations: int = 20, seed: int = 0,
               chunk_size: int = 8192, mesh: Mesh | None = None, valid: np.ndarray | None = None,
               verbose: bool = False, precision: str = "highest",
               on_iteration: Callable[[int, int], None] | None = None) -> KMeansResult:
    """k-means with the chosen backend. 'auto' runs JAX and, only if JAX cannot run it (a device
    runtime error such as running out of memory), falls back to faiss and logs why. `valid` [N]
    bool restricts clustering to those rows (the others get assignment -1). `precision`: the JAX
    backend's distance matmul (kmeans.PRECISIONS). `on_iteration(done, total)` runs after each
    JAX iteration, and once after faiss (which cannot be stopped in its middle)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r}; use one of {BACKENDS}")
    if backend == "faiss":
        result = _faiss(features, k, iterations, seed, valid, verbose)
        if on_iteration is not None:
            on_iteration(iterations, iterations)
        return result
    try:
        return kmeans(features, k, iterations=iterations, seed=seed, chunk_size=chunk_size,
                      mesh=mesh, valid=valid, verbose=verbose, precision=precision,
                      on_iteration=on_iteration)
    except (jax.errors.JaxRuntimeError, MemoryError) as e:
        if backend == "jax" or not faiss_available():
            raise
        logging.warning("JAX k-means could not run (%s: %s); falling back to faiss",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return _faiss(features, k, iterations, seed, valid, verbose)


def _faiss(features, k, iterations, seed, valid, verbose) -> KMeansResult:
    x = features if isinstance(features, np.ndarray) else to_host(features)
    if valid is None:
        return kmeans_faiss(x, k, iterations=iterations, seed=seed, verbose=verbose)
    result = kmeans_faiss(x[valid], k, iterations=iterations, seed=seed, verbose=verbose)
    assignment = np.full(len(x), -1, np.int32)
    assignment[valid] = result.assignment
    result.assignment = assignment
    return result


__all__ = [
    "BACKENDS", "KMeansResult", "PCA", "PRECISIONS", "apply_pca", "assign", "faiss_available", "fit_pca",
    "kmeans", "kmeans_faiss", "natural_sampler", "pca_whiten", "run_kmeans", "sample_epoch",
    "uniform_label_sampler",
]
