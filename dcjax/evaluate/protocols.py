"""The kNN and clustering protocols on network features (or raw pixels), and the shared pieces the
training loop uses for its periodic kNN."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from dcjax import metrics
from dcjax.clustering import run_kmeans
from dcjax.clustering.pca import apply_pca, pca_whiten
from dcjax.data import pipeline
from dcjax.data.pipeline import loader_options
from dcjax.evaluate.common import Splits
from dcjax.evaluate.knn import knn_predict, l2_normalize
from dcjax.evaluate.linear import pixel_arrays
from dcjax.features import Features, extract
from dcjax.runs import Network
from dcjax.step import make_feature_fn


def embedding_features(config: ml_collections.ConfigDict, feature_fn: Callable, variables: tuple,
                 source: Any, mesh: Mesh, desc: str,
                 on_batch: Callable[[int, int], None] | None = None,
                 cached: tuple | None = None) -> Features:
    """The embedding of every image of `source` (deterministic view), in batches of config.eval.batch_size,
    or with `cached` = (ViewCache, batch) in that batch, from or into that cache."""
    cache, batch = cached if cached is not None else (None, config.eval.batch_size)
    return extract(feature_fn, variables, source, pipeline.view_config(config), batch,
                   None, mesh, loader_options(config), desc=desc,
                   on_batch=on_batch, cache=cache)


def knn_scores(config: ml_collections.ConfigDict, bank, bank_labels: np.ndarray, bank_valid,
               queries: np.ndarray, query_labels: np.ndarray, num_classes: int,
               mesh: Mesh) -> dict:
    """kNN top-1 on the features as they are and after PCA-whitening (fit on the bank)."""
    e, cl = config.eval, config.clustering
    out = {}
    predicted = knn_predict(bank, bank_labels, queries, num_classes, k=e.knn_k,
                            weights=e.knn_weights, mesh=mesh)
    out["raw"] = float(np.mean(predicted == query_labels))
    dim = min(cl.pca_dim, queries.shape[1])
    reduced, pca = pca_whiten(bank, dim, chunk_size=cl.chunk_size, mesh=mesh, valid=bank_valid)
    q = np.asarray(apply_pca(pca, queries, chunk_size=cl.chunk_size, mesh=mesh))
    predicted = knn_predict(reduced, np.asarray(bank_labels), q, num_classes, k=e.knn_k,
                            weights=e.knn_weights, mesh=mesh)
    out["pca_whitened"] = float(np.mean(predicted == query_labels))
    out["pca_dim"] = dim
    return out


def knn_protocol(config: ml_collections.ConfigDict, representation, splits: Splits,
                 mesh: Mesh, on_batch: Callable[[int, int], None] | None = None) -> dict:
    """Weighted kNN (cosine, k = config.eval.knn_k) of held-out images against the training split,
    on the representation's rows (evaluate.representations: a network's embedding, raw pixels) as
    they are and PCA-whitened. `on_batch(done, total)` runs after each extraction batch (it may
    raise to stop)."""
    t0 = time.time()
    C = splits.info.num_classes
    bank = representation.rows(config, splits.train, mesh, "bank", on_batch=on_batch,
                               cached=splits.caches.get("train"))
    test = representation.rows(config, splits.test, mesh, "queries", on_batch=on_batch,
                               cached=splits.caches.get("test"))
    scores = knn_scores(config, bank.rows, bank.row_labels, bank.valid, test.to_numpy(),
                        test.labels, C, mesh)
    name = representation.name
    e = config.eval
    return {"features": {name: scores["raw"], f"{name}_pca_whitened": scores["pca_whitened"]},
            "k": e.knn_k, "weights": e.knn_weights, "pca_dim": scores["pca_dim"],
            "train_images": len(splits.train), "test_images": len(splits.test),
            "seconds": time.time() - t0}


def cluster_quality(features, labels: np.ndarray, k: int, *, pca_dim: int | None, iterations: int,
                    seed: int, chunk_size: int = 8192, mesh: Mesh | None = None,
                    valid: np.ndarray | None = None,
                    on_iteration: Callable[[int, int], None] | None = None,
                    row_ids: np.ndarray | None = None) -> dict:
    """k-means (JAX) on `features` (PCA-whitened to `pca_dim` first unless None): NMI, ARI and
    Hungarian accuracy against `labels` (one per row; rows outside `valid` ignored). `row_ids`:
    each row's dataset index (the initial centroids then do not depend on the device layout)."""
    x = features
    if pca_dim is not None:
        x, _ = pca_whiten(features, min(pca_dim, features.shape[1]), chunk_size=chunk_size,
                          mesh=mesh, valid=valid)
    result = run_kmeans(x, k, iterations=iterations, seed=seed, chunk_size=chunk_size, mesh=mesh,
                        valid=valid, on_iteration=on_iteration, row_ids=row_ids)
    keep = slice(None) if valid is None else np.asarray(valid)
    assignment, truth = result.assignment[keep], np.asarray(labels)[keep]
    return {"nmi": metrics.nmi(truth, assignment), "ari": metrics.ari(truth, assignment),
            "accuracy": metrics.clustering_accuracy(truth, assignment),
            "objective": float(result.objective[-1]), **metrics.cluster_size_stats(assignment, k)}


def clustering_protocol(config: ml_collections.ConfigDict, representation, splits: Splits,
                        mesh: Mesh, on_batch: Callable[[int, int], None] | None = None) -> dict:
    """k-means with k = number of classes on the held-out split's PCA-whitened representation
    rows. `on_batch(done, total)` runs after each extraction batch and k-means iteration."""
    t0 = time.time()
    C, cl = splits.info.num_classes, config.clustering
    test = representation.rows(config, splits.test, mesh, "features", on_batch=on_batch,
                               cached=splits.caches.get("test"))
    scores = cluster_quality(test.rows, test.row_labels, C, pca_dim=cl.pca_dim, valid=test.valid,
                             on_iteration=on_batch, row_ids=test.image, iterations=cl.iterations,
                             seed=config.seed, chunk_size=cl.chunk_size, mesh=mesh)
    return {"features": representation.name, "k": C,
            "pca_dim": min(cl.pca_dim, test.rows.shape[1]), **scores,
            "test_images": len(splits.test), "seconds": time.time() - t0}


# ------------------------------------------------------------------ the end-of-run comparison

COMPARISON_RESTARTS = 10  # k-means initialisations averaged in `final_comparison`


def mean_nmi(features, labels: np.ndarray, k: int, *, restarts: int, iterations: int, seed: int,
             chunk_size: int, mesh: Mesh | None = None, valid: np.ndarray | None = None,
             on_iteration: Callable[[int, int], None] | None = None,
             row_ids: np.ndarray | None = None) -> dict:
    """NMI with `labels` of k-means on `features` as they are, averaged over `restarts`
    initialisations (seeds seed, seed + 1, ...): {'nmi': mean, 'nmi_std', 'nmi_runs'}."""
    runs = [cluster_quality(features, labels, k, pca_dim=None, iterations=iterations, seed=seed + i,
                            chunk_size=chunk_size, mesh=mesh, valid=valid,
                            on_iteration=on_iteration, row_ids=row_ids)["nmi"]
            for i in range(restarts)]
    return {"nmi": float(np.mean(runs)), "nmi_std": float(np.std(runs)), "nmi_runs": runs}


def final_comparison(config: ml_collections.ConfigDict, networks: dict[str, Network], source: Any,
                     split: str, num_classes: int, mesh: Mesh, *, pixels: bool,
                     pixel_mesh: Mesh | None = None,
                     on_batch: Callable[[int, int], None] | None = None,
                     on_pixel_iteration: Callable[[int, int], None] | None = None,
                     cached: tuple | None = None) -> dict | None:
    """What the end of a run prints: NMI with the labels of k-means with k = the number of classes
    on the images of `source` (a labelled split, held-out when there is one), for each network's
    fc7 features L2-normalised (no PCA-whitening: a whitening fitted on a few hundred held-out
    images would mostly amplify noise) and, with `pixels`, for the raw pixels of the
    deterministic view, each averaged over COMPARISON_RESTARTS k-means initialisations. Same k,
    same images and same initialisation seeds for all. Pixels run on `pixel_mesh` (the caller's
    process alone). `cached` = (ViewCache, batch) keeps the decoded view between the networks.

    fc7 is taken before its ReLU, as DeepCluster's own k-means takes it (the headline `nmi`);
    each network's entry also holds `after_relu`, the same measure on ReLU(fc7), which is what
    the network's classifier reads: a trained network leaves most fc7 entries negative (the
    classifier never sees them) and those carry much of the pre-ReLU geometry
    (docs/results.md, "Fashion-MNIST").
    Returns {'k', 'split', 'images', 'restarts', name: {'nmi', 'nmi_std', 'nmi_runs'[,
    'after_relu']}}, or None when some image of `source` has no label."""
    cl = config.clustering
    common = dict(restarts=COMPARISON_RESTARTS, iterations=cl.iterations, seed=config.seed,
                  chunk_size=cl.chunk_size)
    out: dict[str, Any] = {"k": num_classes, "split": split, "images": len(source),
                           "restarts": COMPARISON_RESTARTS,
                           "features": ", ".join(sorted({
                               f"{net.model.embedding_description}, L2-normalised"
                               for net in networks.values()})) or "pixels"}
    for name, net in networks.items():
        feature_fn = jax.jit(make_feature_fn(net.model))
        f = embedding_features(config, feature_fn, net.variables, source, mesh, f"{name} features",
                         on_batch=on_batch, cached=cached)
        if f.labels.min() < 0:
            return None
        scored = dict(labels=f.row_labels, k=num_classes, mesh=mesh, valid=f.valid,
                      on_iteration=on_batch, row_ids=f.image, **common)
        out[name] = mean_nmi(l2_normalize(f.rows), **scored)
        out[name]["after_relu"] = mean_nmi(l2_normalize(jax.nn.relu(f.rows)), **scored)
    if pixels:
        x, y = pixel_arrays(config, source)
        out["pixels"] = mean_nmi(x, y, num_classes, mesh=pixel_mesh,
                                 on_iteration=on_pixel_iteration, **common)
    return out
