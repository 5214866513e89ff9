"""faiss k-means with the interface of `dcjax.clustering.kmeans.kmeans`: a fallback and the test oracle.

Configured as the DeepCluster reference configures faiss: every point used (no subsampling:
`max_points_per_centroid` above N), Euclidean distance, k random points to start, a GPU index when a
GPU build of faiss and a GPU are present. faiss is optional: importing this module never fails,
calling it without faiss installed raises an ImportError that says how to install it.
"""

from __future__ import annotations

import numpy as np

from dcjax.clustering.kmeans import KMeansResult, check_k
from dcjax.sharding import check_features


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise ImportError("the faiss backend needs faiss: `pip install faiss-cpu` "
                          "(or faiss-gpu-cu12 on NVIDIA GPUs)") from e
    return faiss


def num_gpus() -> int:
    faiss = _faiss()
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def kmeans_faiss(features, k: int, *, iterations: int = 20, seed: int = 0,
                 initial_centroids=None, use_gpu: bool | None = None,
                 verbose: bool = False) -> KMeansResult:
    """faiss k-means on `features` [N, D]; the assignment is the nearest final centroid."""
    faiss = _faiss()
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32))
    n, d = check_features(x, "features")
    check_k(k, n)
    gpu = num_gpus() > 0 if use_gpu is None else use_gpu
    km = faiss.Kmeans(d, k, niter=iterations, seed=seed, verbose=verbose, gpu=bool(gpu),
                      max_points_per_centroid=max(n // k + 1, 10_000_000), min_points_per_centroid=1)
    init = None
    if initial_centroids is not None:
        init = np.ascontiguousarray(np.asarray(initial_centroids, dtype=np.float32))
        if init.shape != (k, d):
            raise ValueError(f"initial centroids have shape {init.shape}, expected ({k}, {d})")
    km.train(x, init_centroids=init)
    _, labels = km.index.search(x, 1)
    stats = km.iteration_stats
    return KMeansResult(centroids=np.asarray(km.centroids, np.float32),
                        assignment=labels[:, 0].astype(np.int32),
                        objective=np.array([s["obj"] for s in stats], np.float64),
                        splits=np.array([s["nsplit"] for s in stats], np.int64))
