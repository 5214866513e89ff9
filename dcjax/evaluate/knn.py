"""Weighted k-nearest-neighbour classification with cosine similarity, against a sharded bank.

The bank (training features) stays row-sharded on the devices, as extraction left it: for each chunk
of queries every device scores its own rows, keeps its top k, and the devices' candidates are
gathered and reduced to the global top k. No [queries x bank] array exists beyond one chunk per
device. Votes follow scikit-learn's `KNeighborsClassifier(metric='cosine')`: weights 'distance'
(1 / (1 - cos); a query with exact matches votes with those only) or 'uniform'; ties between classes
go to the lower class id.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from dcjax.clustering.kmeans import to_host
from dcjax.sharding import AXIS, default_mesh, put
from dcjax.sharding import rows as row_sharding

WEIGHTS = ("distance", "uniform")


def l2_normalize(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("mesh", "k"))
def _top_k(bank, bank_labels, queries, *, mesh: Mesh, k: int):
    """Global top-k cosine similarities [Q, k] and the labels [Q, k] of those bank rows."""
    rows, rep = PartitionSpec(AXIS), PartitionSpec()

    def local(bank, bank_labels, queries):
        sims = jnp.dot(l2_normalize(queries), l2_normalize(bank).T, precision=lax.Precision.HIGHEST)
        sims = jnp.where(bank_labels[None, :] >= 0, sims, -jnp.inf)
        kk = min(k, bank.shape[0])
        values, idx = lax.top_k(sims, kk)
        labels = bank_labels[idx]
        values = lax.all_gather(values, AXIS, axis=1, tiled=True)  # [Q, ndev * kk]
        labels = lax.all_gather(labels, AXIS, axis=1, tiled=True)
        values, pick = lax.top_k(values, k)
        return values, jnp.take_along_axis(labels, pick, axis=1)

    return jax.shard_map(local, mesh=mesh, in_specs=(rows, rows, rep), out_specs=(rep, rep),
                         check_vma=False)(bank, bank_labels, queries)


def vote(similarities: np.ndarray, labels: np.ndarray, num_classes: int,
         weights: str = "distance") -> np.ndarray:
    """Class predicted for each query from its neighbours' cosine similarities and labels [Q, k]."""
    if weights not in WEIGHTS:
        raise ValueError(f"kNN weights must be one of {WEIGHTS}, got {weights!r}")
    similarities = similarities.astype(np.float64)
    if weights == "uniform":
        w = np.ones_like(similarities)
    else:
        distance = 1.0 - similarities
        exact = distance <= 0.0
        with np.errstate(divide="ignore"):
            w = np.where(exact.any(axis=1, keepdims=True), exact.astype(np.float64),
                         1.0 / distance)
    scores = np.zeros((labels.shape[0], num_classes))
    np.add.at(scores, (np.arange(labels.shape[0])[:, None], labels), w)
    return scores.argmax(axis=1).astype(np.int32)


def knn_predict(bank, bank_labels: np.ndarray, queries: np.ndarray, num_classes: int, *,
                k: int = 20, weights: str = "distance", chunk_size: int = 1024,
                mesh: Mesh | None = None) -> np.ndarray:
    """Predicted class [Q] of each query row from its k nearest bank rows (cosine).

    bank [R, D]: numpy or a row-sharded jax.Array (padding rows allowed); bank_labels [R] int with
    -1 on rows to ignore; queries [Q, D] numpy.
    """
    mesh = mesh or default_mesh()
    ndev = mesh.devices.size
    bank_labels = np.asarray(bank_labels, np.int32)
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(f"bank {tuple(bank.shape)} and queries {tuple(queries.shape)} must be "
                         f"[N, D] with the same D")
    if bank_labels.shape != (bank.shape[0],):
        raise ValueError(f"bank_labels has shape {bank_labels.shape}, expected ({bank.shape[0]},)")
    usable = int((bank_labels >= 0).sum())
    if not 1 <= k <= usable:
        raise ValueError(f"kNN k={k} must be between 1 and the {usable} labelled bank rows")
    pad = (-bank.shape[0]) % ndev
    rows = row_sharding(mesh)
    bank_labels = np.pad(bank_labels, (0, pad), constant_values=-1)
    if isinstance(bank, np.ndarray):
        bank = put(np.pad(bank.astype(np.float32), ((0, pad), (0, 0))), rows)
    elif pad or not bank.sharding.is_equivalent_to(rows, 2):
        bank = jax.jit(lambda b: jnp.pad(b.astype(jnp.float32), ((0, pad), (0, 0))),
                       out_shardings=rows)(bank)
    labels_dev = put(bank_labels, rows)
    out = []
    nq = queries.shape[0]
    chunk = min(chunk_size, nq)
    for start in range(0, math.ceil(nq / chunk) * chunk, chunk):
        q = queries[start:start + chunk].astype(np.float32)
        if q.shape[0] < chunk:  # one compiled shape for every chunk
            q = np.pad(q, ((0, chunk - q.shape[0]), (0, 0)))
        sims, labels = _top_k(bank, labels_dev, q, mesh=mesh, k=k)
        out.append(vote(to_host(sims), to_host(labels), num_classes, weights))
    return np.concatenate(out)[:nq]
