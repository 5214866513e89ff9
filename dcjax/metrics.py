"""Clustering metrics: NMI, ARI, clustering accuracy (Hungarian matching), cluster-size statistics.

All work from the sparse contingency table (pairs that occur), so two assignments into 10,000
clusters over a million images never need a dense 10,000 x 10,000 table (except accuracy, which needs
the matching's cost matrix: k_true x k_pred).
"""

from __future__ import annotations

import numpy as np


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in length: {a.size} and {b.size}")
    if a.size == 0:
        raise ValueError("labelings are empty")
    return a, b


def contingency(a: np.ndarray, b: np.ndarray):
    """(counts of each occurring (a, b) pair, its a-class, its b-class, a sizes, b sizes)."""
    a, b = _check_pair(a, b)
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    nb = bi.max() + 1
    pairs, counts = np.unique(ai.astype(np.int64) * nb + bi, return_counts=True)
    return counts, pairs // nb, pairs % nb, np.bincount(ai), np.bincount(bi)


def _entropy(sizes: np.ndarray, n: int) -> float:
    p = sizes[sizes > 0] / n
    return float(-(p * np.log(p)).sum())


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (scikit-learn's default)."""
    counts, ra, rb, sa, sb = contingency(a, b)
    n = counts.sum()
    ha, hb = _entropy(sa, n), _entropy(sb, n)
    if ha == 0 and hb == 0:
        return 1.0
    mi = float((counts / n * (np.log(counts * n) - np.log(sa[ra] * sb[rb].astype(float)))).sum())
    denom = (ha + hb) / 2
    return float(max(mi, 0.0) / denom) if denom > 0 else 0.0


def _comb2(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float((x * (x - 1) / 2).sum())


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index."""
    counts, _, _, sa, sb = contingency(a, b)
    n = counts.sum()
    index, sum_a, sum_b = _comb2(counts), _comb2(sa), _comb2(sb)
    total = n * (n - 1) / 2
    expected = sum_a * sum_b / total if total else 0.0
    maximum = (sum_a + sum_b) / 2
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def clustering_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Best one-to-one matching of clusters to labels (Hungarian), fraction of images it gets right.

    With more clusters than labels, unmatched clusters count as wrong.
    """
    from scipy.optimize import linear_sum_assignment

    counts, rl, rc, sl, sc = contingency(labels, clusters)
    table = np.zeros((len(sl), len(sc)), dtype=np.int64)
    table[rl, rc] = counts
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / counts.sum())


def cluster_size_stats(assignment: np.ndarray, k: int) -> dict[str, float]:
    """Non-empty clusters, largest cluster's fraction of the images, entropy of the size distribution
    (nats; log k when perfectly balanced) and that entropy over log k."""
    sizes = np.bincount(np.asarray(assignment).reshape(-1), minlength=k)
    n = sizes.sum()
    entropy = _entropy(sizes, n)
    return {
        "nonempty_clusters": int(np.count_nonzero(sizes)),
        "largest_cluster_frac": float(sizes.max() / n),
        "size_entropy": entropy,
        "size_entropy_normalized": entropy / np.log(k) if k > 1 else 1.0,
    }
