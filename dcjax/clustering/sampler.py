"""Drawing an epoch's training indices from the pseudo-labels (docs/design.md section 1, step 6).

`uniform_label_sampler` is the paper's: every non-empty cluster contributes the same number of
images, so a few huge clusters cannot dominate the epoch (the trivial solution).
`reference_sampler` is what the official code feeds: its balanced draw of image indices, used as
positions in the list of images sorted by cluster (its DataLoader indexes the cluster-sorted
ReassignedDataset with them), so what the network sees follows the natural cluster sizes, with
repeats (docs/design.md). `natural_sampler` is a plain shuffle of the dataset.
`config.clustering.sampler` picks one.
"""

from __future__ import annotations

import math

import numpy as np


def _by_cluster(assignment, n: int):
    """(image indices sorted by cluster, stably; the non-empty cluster ids; where each starts in
    that order; their sizes), after checking `assignment` [N] and `n`."""
    assignment = np.asarray(assignment)
    if assignment.ndim != 1 or assignment.size == 0:
        raise ValueError(f"assignment must be a non-empty 1-D array, got shape {assignment.shape}")
    if n < 1:
        raise ValueError(f"n={n} must be positive")
    order = np.argsort(assignment, kind="stable")
    labels, starts, sizes = np.unique(assignment[order], return_index=True, return_counts=True)
    return order, labels, starts, sizes


def uniform_label_sampler(assignment: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n image indices [n] int64, shuffled, balanced over the non-empty clusters of `assignment`.

    Each non-empty cluster gives ceil(n / nonempty) images, drawn without replacement when it has
    that many and with replacement otherwise; the surplus (fewer than `nonempty`) is taken one image
    each from randomly chosen clusters, so per-cluster counts differ by at most one.
    """
    order, labels, starts, sizes = _by_cluster(assignment, n)
    per_cluster = math.ceil(n / len(labels))
    quota = np.full(len(labels), per_cluster)
    quota[rng.choice(len(labels), size=per_cluster * len(labels) - n, replace=False)] -= 1
    picks = []
    for start, size, q in zip(starts, sizes, quota):
        members = order[start : start + size]
        picks.append(rng.choice(members, size=q, replace=bool(size < q)))
    indices = np.concatenate(picks)
    rng.shuffle(indices)
    return indices.astype(np.int64)


def natural_sampler(num_images: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices [n] int64: a shuffle of the dataset (repeated or cut to reach n)."""
    reps = math.ceil(n / num_images)
    return np.concatenate([rng.permutation(num_images) for _ in range(reps)])[:n].astype(np.int64)


def reference_sampler(assignment: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n image indices [n] int64: what the official code trains on, step by step.

    1. Its UnifLabelSampler draws int(n / nonempty) + 1 image indices from each non-empty cluster
       (with replacement when the cluster has at most that many), concatenates them in cluster
       order, shuffles them and keeps the first n.
    2. Its DataLoader uses those values as positions in its ReassignedDataset, which lists the
       images cluster by cluster (cluster 0's in ascending index order, then cluster 1's, ...).
    So the image fed at each step is `by_cluster[drawn index]`.
    """
    by_cluster, labels, starts, sizes = _by_cluster(assignment, n)
    per_cluster = int(n / len(labels)) + 1
    drawn = np.concatenate([
        rng.choice(by_cluster[start:start + size], size=per_cluster, replace=bool(size <= per_cluster))
        for start, size in zip(starts, sizes)])
    rng.shuffle(drawn)
    positions = drawn[:n]
    if positions.max() >= len(by_cluster):
        raise ValueError("an image index beyond the dataset")  # cannot happen: indices < N
    return by_cluster[positions].astype(np.int64)


SAMPLERS = ("uniform", "reference", "natural")  # config.clustering.sampler


def sample_epoch(kind: str, assignment: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "uniform":
        return uniform_label_sampler(assignment, n, rng)
    if kind == "reference":
        return reference_sampler(assignment, n, rng)
    if kind == "natural":
        return natural_sampler(len(assignment), n, rng)
    raise ValueError(f"unknown sampler {kind!r}; use one of {SAMPLERS}")
