"""The clustering of a network's features: DeepCluster's pseudo-labels (docs/design.md, steps 1-4).

`cluster_network` runs extract (fc7, deterministic view) -> pca_whiten -> kmeans over a whole split
and returns a `Clustering` in dataset order. The trainer calls it at the start of every epoch and on
the trained network; `dcjax.export` calls it on any checkpoint. The network after epoch e is
clustered with seed `config.seed + e + 1` (`clustering_seed`), so the clustering the trainer exports
at the end and `python -m dcjax.export` on the final checkpoint are the same.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from dcjax.clustering import PCA, apply_pca, assign, pca_whiten, run_kmeans
from dcjax.data import pipeline
from dcjax.features import Features, extract
from dcjax.view_cache import ViewCache

Poll = Callable[[int, int], None]


def clustering_seed(config: ml_collections.ConfigDict, epoch: int) -> int:
    """The k-means seed of the clustering made at the start of `epoch` (of the network trained for
    `epoch` epochs)."""
    return int(config.seed) + int(epoch)


@dataclasses.dataclass
class Clustering:
    """k-means of the PCA-whitened fc7 features of every image of a split, in dataset order.

    `assignment` is k-means' last assignment step (the pseudo-labels); `nearest` and `distance`
    (when asked for) are each image's nearest final centroid and its Euclidean distance to it, which
    is what `predict` computes for a new image. `features` (fc7, [R, D] row-sharded) and `reduced`
    ([R, pca_dim]) are kept when asked for, with `image` [R] mapping rows to dataset indices (-1 on
    padding).
    """

    assignment: np.ndarray  # [N] int32
    centroids: np.ndarray  # [k, pca_dim] float32
    pca: PCA  # mean [D], components [D, pca_dim], eigenvalues [pca_dim]
    objective: float
    num_splits: int
    rescored_share: float  # rows re-scored in float32 by precision='exact_fast' (else 0)
    labels: np.ndarray  # [N] int32, -1 where unknown
    image: np.ndarray  # [R] int64
    valid: np.ndarray  # [R] bool
    seconds: dict[str, float]
    nearest: np.ndarray | None = None  # [N] int32
    distance: np.ndarray | None = None  # [N] float32
    features: Features | None = None
    reduced: jax.Array | None = None
    cohesion_median: float | None = None  # dcjax.quality.median_cohesion of this clustering

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])


def _dataset_order(rows: np.ndarray, image: np.ndarray, valid: np.ndarray, n: int) -> np.ndarray:
    out = np.empty(n, rows.dtype)
    out[image[valid]] = rows[valid]
    return out


def cluster_network(config: ml_collections.ConfigDict, feature_fn: Callable, variables: tuple,
                    source: Any, mesh: Mesh, seed: int, *, write_rows: Callable | None = None,
                    on_batch: Poll | None = None, after_pca: Callable[[], None] | None = None,
                    on_iteration: Poll | None = None, nearest: bool = False,
                    keep_features: bool = False, verbose: bool = False,
                    cache: ViewCache | None = None) -> Clustering:
    """extract -> pca_whiten -> kmeans on `source` with `config`'s model geometry and clustering.

    `cache` keeps the decoded deterministic view between calls (`dcjax.view_cache`).
    `on_batch(done, total)` runs after each extraction batch, `after_pca()` once PCA is done and
    `on_iteration(done, total)` after each k-means iteration (each may raise to stop). With
    `nearest`, each image's nearest final centroid and distance are computed too; with
    `keep_features` the fc7 and reduced rows stay in the result (otherwise they are freed).
    """
    c = config
    t0 = time.time()
    f = extract(feature_fn, variables, source, pipeline.view_config(c), c.batch_size,
                None, mesh, pipeline.loader_options(c), write_rows, on_batch=on_batch,
                cache=cache)
    jax.block_until_ready(f.rows)
    t1 = time.time()
    reduced, pca = pca_whiten(f.rows, c.clustering.pca_dim, chunk_size=c.clustering.chunk_size,
                              mesh=mesh, valid=f.valid)
    jax.block_until_ready(reduced)
    fc7, f.rows = f.rows, None
    if not keep_features:
        del fc7  # k-means runs without the fc7 buffer, as in every epoch (docs/scaling.md)
    if after_pca is not None:
        after_pca()
    t2 = time.time()
    result = run_kmeans(reduced, c.clustering.k, backend=c.clustering.backend,
                        iterations=c.clustering.iterations, seed=seed,
                        chunk_size=c.clustering.chunk_size, mesh=mesh, valid=f.valid,
                        verbose=verbose, precision=c.clustering.precision,
                        on_iteration=on_iteration, row_ids=f.image)
    t3 = time.time()
    n = len(source)
    from dcjax.quality import median_cohesion

    cohesion = median_cohesion(reduced, np.asarray(result.assignment), f.valid, c.clustering.k)
    out = Clustering(
        assignment=_dataset_order(result.assignment, f.image, f.valid, n),
        centroids=np.asarray(result.centroids, np.float32), pca=pca,
        objective=float(result.objective[-1]), num_splits=result.num_splits,
        rescored_share=result.rescored_share, labels=f.labels,
        image=f.image, valid=f.valid,
        seconds={"time_extract": t1 - t0, "time_pca": t2 - t1, "time_kmeans": t3 - t2},
        cohesion_median=cohesion)
    if nearest:
        best, dist = assign(reduced, out.centroids, chunk_size=c.clustering.chunk_size, mesh=mesh,
                            precision=c.clustering.precision)
        out.nearest = _dataset_order(best.astype(np.int32), f.image, f.valid, n)
        out.distance = np.sqrt(np.maximum(_dataset_order(dist, f.image, f.valid, n), 0.0))
    if keep_features:
        f.rows = fc7
        out.features, out.reduced = f, reduced
    return out


def nearest_centroids(fc7, pca: PCA, centroids: np.ndarray, *, chunk_size: int = 8192,
                      mesh: Mesh | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cluster [n] int32 and Euclidean distance [n] of new fc7 rows [n, D] under a saved PCA and
    centroids: what `cluster_network(..., nearest=True)` gives the images it clustered."""
    reduced = apply_pca(pca, fc7, chunk_size=chunk_size, mesh=mesh)
    best, dist = assign(reduced, centroids, chunk_size=chunk_size, mesh=mesh)
    return best.astype(np.int32), np.sqrt(np.maximum(dist, 0.0)).astype(np.float32)
