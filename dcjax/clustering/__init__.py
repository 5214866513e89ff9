"""DeepCluster's clustering half: PCA-whitening, k-means (JAX or faiss), the epoch sampler."""

from __future__ import annotations

import logging
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from dcjax.clustering.faiss_backend import faiss_available, kmeans_faiss
from dcjax.clustering.kmeans import (
    PRECISION_NAMES,
    PRECISIONS,
    KMeansResult,
    assign,
    check_precision,
    init_centroids,
    kmeans,
    to_host,
)
from dcjax.clustering.pca import PCA, apply_pca, fit_pca, pca_whiten
from dcjax.clustering.sampler import natural_sampler, sample_epoch, uniform_label_sampler
from dcjax.sharding import available_memory

BACKENDS = ("jax", "faiss", "auto")


def check_config(config) -> None:
    """config.clustering's backend, precision and sampler; ConfigError naming the first bad one."""
    from dcjax.clustering.sampler import SAMPLERS
    from dcjax.config_lib import require

    cl = config.clustering
    require(cl.backend in BACKENDS, f"config.clustering.backend={cl.backend!r} must be one of "
            f"{BACKENDS}")
    require(cl.precision in PRECISION_NAMES, f"config.clustering.precision={cl.precision!r} must "
            f"be one of {PRECISION_NAMES}")
    require(not cl.precision.startswith("tf32") or jax.devices()[0].platform == "gpu",
            f"config.clustering.precision={cl.precision!r} needs GPU devices; use 'highest' or "
            "a bf16 one")
    require(cl.sampler in SAMPLERS, f"config.clustering.sampler={cl.sampler!r} must be one of "
            f"{SAMPLERS}")


def run_kmeans(features, k: int, *, backend: str = "jax", iterations: int = 20, seed: int = 0,
               chunk_size: int = 8192, mesh: Mesh | None = None, valid: np.ndarray | None = None,
               verbose: bool = False, precision: str = "highest",
               on_iteration: Callable[[int, int], None] | None = None,
               row_ids: np.ndarray | None = None) -> KMeansResult:
    """k-means with the chosen backend, from the same k initial rows (`init_centroids(features, k,
    seed, valid, row_ids)`: with `row_ids`, each row's dataset index, the same images on any device
    layout) whichever runs. 'auto' picks one by `choose_backend` and logs the choice and
    why; if the JAX k-means it picked cannot run (a device runtime error such as running out of
    memory) it falls back to faiss and logs why. `valid` [N] bool restricts clustering to those
    rows (the others get assignment -1). `precision`: the JAX backend's distance computation
    (kmeans.PRECISION_NAMES). `on_iteration(done, total)` runs after each JAX iteration, and once
    after faiss (which cannot be stopped in its middle)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown k-means backend {backend!r}; use one of {BACKENDS}")
    check_precision(precision, mesh)  # whichever backend runs
    chosen = backend
    if backend == "auto":
        across = isinstance(features, jax.Array) and not features.is_fully_addressable
        chosen, reason = choose_backend(*features.shape, mesh=mesh, across_processes=across)
        _log_once(f"k-means backend 'auto': {chosen} ({reason})")
    if chosen == "faiss":  # faiss' per-iteration lines only when asked for by name
        result = _faiss(features, k, iterations, seed, valid, verbose and backend == "faiss",
                        row_ids)
        if on_iteration is not None:
            on_iteration(iterations, iterations)
        return result
    try:
        result = kmeans(features, k, iterations=iterations, seed=seed, chunk_size=chunk_size,
                        mesh=mesh, valid=valid, verbose=verbose, precision=precision,
                        on_iteration=on_iteration, row_ids=row_ids)
    except (jax.errors.JaxRuntimeError, MemoryError) as e:
        if backend == "jax" or not faiss_available():
            raise
        logging.warning("JAX k-means could not run (%s: %s); falling back to faiss",
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return _faiss(features, k, iterations, seed, valid, verbose, row_ids)
    if precision == "exact_fast":
        logging.info("k-means exact_fast: %.2f%% of row assignments re-scored in float32",
                     100.0 * result.rescored_share)
    return result


def choose_backend(n: int, d: int, *, mesh: Mesh | None = None,
                   across_processes: bool = False) -> tuple[str, str]:
    """What backend='auto' runs on N x D features, and why: faiss on a CPU-only host where it is
    installed and a host copy of the features fits in available memory (faiss' BLAS is the faster
    k-means on CPUs, docs/benchmarks.md); the JAX k-means on accelerators and whenever the
    features are sharded across processes (faiss sees one process's memory)."""
    devices = mesh.devices.flat if mesh is not None else jax.devices()
    platform = next(iter(devices)).platform
    if platform != "cpu":
        return "jax", f"the devices are {platform}s"
    if across_processes:
        return "jax", f"the features are sharded across {jax.process_count()} processes"
    if not faiss_available():
        return "jax", "faiss is not installed"
    need = n * d * 4 + n * 16  # a float32 host copy, faiss' labels and distances
    have = available_memory()
    if have is not None and need > 0.8 * have:
        return "jax", (f"a host copy of the features ({need / 2**30:.1f} GiB) does not fit in "
                       f"the available memory ({have / 2**30:.1f} GiB)")
    return "faiss", "CPU devices only and faiss is installed: the faster k-means on CPUs"


_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logging.info(message)


def _faiss(features, k, iterations, seed, valid, verbose, row_ids=None) -> KMeansResult:
    init = init_centroids(features, k, seed, valid, row_ids)  # the JAX backend's starting rows
    x = features if isinstance(features, np.ndarray) else to_host(features)
    if valid is None:
        return kmeans_faiss(x, k, iterations=iterations, seed=seed, initial_centroids=init,
                            verbose=verbose)
    result = kmeans_faiss(x[valid], k, iterations=iterations, seed=seed, initial_centroids=init,
                          verbose=verbose)
    assignment = np.full(len(x), -1, np.int32)
    assignment[valid] = result.assignment
    result.assignment = assignment
    return result


__all__ = [
    "BACKENDS", "KMeansResult", "PCA", "PRECISION_NAMES", "PRECISIONS", "apply_pca", "assign",
    "choose_backend", "faiss_available", "fit_pca", "kmeans", "kmeans_faiss", "natural_sampler",
    "pca_whiten", "run_kmeans", "sample_epoch", "uniform_label_sampler",
]
