"""Clustering metrics equal scikit-learn's and behave as their definitions say."""

import numpy as np
import pytest
from sklearn import metrics as skm

from dcjax.metrics import ari, cluster_size_stats, clustering_accuracy, nmi


@pytest.mark.parametrize("seed,ka,kb", [(0, 10, 10), (1, 10, 100), (2, 3, 50), (3, 1000, 7)])
def test_nmi_and_ari_equal_scikit_learn(seed, ka, kb):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, ka, 5000)
    b = np.where(rng.random(5000) < 0.5, a % kb, rng.integers(0, kb, 5000))
    assert nmi(a, b) == pytest.approx(skm.normalized_mutual_info_score(a, b), abs=1e-10)
    assert ari(a, b) == pytest.approx(skm.adjusted_rand_score(a, b), abs=1e-10)


def test_identical_and_independent_labelings():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 10, 20000)
    perm = rng.permutation(10)
    assert nmi(a, perm[a]) == pytest.approx(1.0)
    assert ari(a, perm[a]) == pytest.approx(1.0)
    assert clustering_accuracy(a, perm[a]) == pytest.approx(1.0)
    b = rng.integers(0, 10, 20000)
    assert nmi(a, b) < 0.01 and abs(ari(a, b)) < 0.01


def test_accuracy_uses_one_to_one_matching():
    labels = np.array([0, 0, 0, 1, 1, 1])
    # Two clusters both mostly label 0: only one may be matched to it.
    clusters = np.array([5, 5, 7, 7, 7, 9])
    assert clustering_accuracy(labels, clusters) == pytest.approx(4 / 6)


def test_cluster_size_stats():
    stats = cluster_size_stats(np.array([0, 0, 0, 1, 2, 2]), k=5)
    assert stats["nonempty_clusters"] == 3
    assert stats["largest_cluster_frac"] == pytest.approx(0.5)
    p = np.array([3, 1, 2]) / 6
    assert stats["size_entropy"] == pytest.approx(-(p * np.log(p)).sum())
    balanced = cluster_size_stats(np.arange(100) % 4, k=4)
    assert balanced["size_entropy_normalized"] == pytest.approx(1.0)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="differ in length"):
        nmi(np.zeros(3), np.zeros(4))
