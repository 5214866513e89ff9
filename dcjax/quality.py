"""Label-free signals of how good a run's clusters are, for data without labels (summary.json,
export/clusters.csv, the end-of-run lines):

  * agreement with the trivial clustering: NMI between the run's clusters and k-means on the raw
    pixels of the same images with the same k (centre view shrunk to 32x32, clustered as they are,
    as the end-of-run pixel baseline does, by scikit-learn's k-means; at most MAX_IMAGES images,
    drawn by config.seed, 20 iterations; not computed when k leaves fewer than 5 sampled images
    per cluster, as ImageNet's k = 10,000 does). High
    agreement means the network mostly sorts colours and layout, which raw pixels do too;
  * cohesion per cluster: the mean resultant length of its images' PCA-whitened, L2-normalised
    features (the norm of their mean: 1 when they all point the same way, near 0 when they spread
    over the sphere);
  * whether the clusters are still moving: the trend of nmi_prev (each epoch's clustering against
    the one before) over the last epochs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PIXEL_SIDE = 32
MAX_IMAGES = 20_000
MIN_PER_CLUSTER = 5  # pixel images per cluster below which the agreement is not computed
ITERATIONS = 20  # k-means iterations on the pixels (DeepCluster's own count)
TREND_EPOCHS = 5
STILL_MOVING = 0.02  # nmi_prev gained over the last TREND_EPOCHS epochs above which clusters move


class _Subset:
    def __init__(self, source: Any, indices: np.ndarray):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.source[int(self.indices[i])]


def pixel_rows(config: Any, source: Any, indices: np.ndarray) -> np.ndarray:
    """[len(indices), 32 * 32 * 3] float32 in [0, 1]: each image's centre view, area-averaged."""
    import cv2

    from dcjax.data import pipeline

    rows = []
    for b in pipeline.ordered_batches(_Subset(source, indices), pipeline.view_config(config),
                                      min(256, len(indices)), num_threads=config.data.num_threads):
        for image in b["image"][b["mask"]]:
            small = cv2.resize(np.asarray(image), (PIXEL_SIDE, PIXEL_SIDE),
                               interpolation=cv2.INTER_AREA)
            rows.append(small.reshape(-1))
    return np.stack(rows).astype(np.float32) / 255.0


def pixel_clustering(config: Any, source: Any, k: int, seed: int) -> dict:
    """{'pick': the sampled dataset indices, 'labels': k-means on their raw pixels (None when k
    leaves fewer than MIN_PER_CLUSTER sampled images per cluster)}: the trivial clustering that
    `agreement` compares a run's clusters with."""
    from sklearn.cluster import KMeans

    n = len(source)
    rng = np.random.default_rng([seed, 4099])
    pick = np.sort(rng.choice(n, MAX_IMAGES, replace=False)) if n > MAX_IMAGES else np.arange(n)
    if k * MIN_PER_CLUSTER > len(pick):  # e.g. ImageNet's k = 10,000: the sample cannot say
        return {"pick": pick, "labels": None}
    x = pixel_rows(config, source, pick)
    labels = KMeans(n_clusters=k, n_init=1, max_iter=ITERATIONS, random_state=seed).fit(x).labels_
    return {"pick": pick, "labels": labels}


def agreement(pixels: dict, assignment: np.ndarray) -> float | None:
    """NMI between `assignment` (dataset order) and the pixel clustering, or None."""
    from dcjax.metrics import nmi

    if pixels["labels"] is None:
        return None
    return float(nmi(pixels["labels"], np.asarray(assignment)[pixels["pick"]]))


def pixel_agreement(config: Any, source: Any, assignment: np.ndarray, k: int, seed: int,
                    pixels: dict | None = None) -> dict:
    """{'pixel_agreement_nmi', 'pixel_agreement_images'}: NMI between `assignment` (dataset order)
    and k-means on the raw pixels of the same images with the same k (`pixels`, when given, is
    that clustering already computed)."""
    pixels = pixels or pixel_clustering(config, source, k, seed)
    return {"pixel_agreement_nmi": agreement(pixels, assignment),
            "pixel_agreement_images": int(len(pixels["pick"]))}


def median_cohesion(reduced: Any, assignment_rows: np.ndarray, valid: np.ndarray, k: int
                    ) -> float | None:
    """The median over non-empty clusters of `cohesion`, from the clustered rows as k-means saw
    them (reduced [R, d], row order, on the devices and sharded by rows across processes, or a
    host array) and every row's cluster (`assignment_rows` [R], whole on every process)."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    a = np.where(np.asarray(valid), np.asarray(assignment_rows), k).astype(np.int32)

    def sums_of(x, s):
        return jax.ops.segment_sum(x, s, num_segments=k + 1)

    sharding = getattr(reduced, "sharding", None)
    if isinstance(sharding, NamedSharding):  # the rows' cluster ids sharded as the rows are
        ids = jax.make_array_from_callback(
            a.shape, NamedSharding(sharding.mesh, PartitionSpec((tuple(sharding.spec) + (None,))[0])),
            lambda index: a[index])
        sums = jax.jit(sums_of, out_shardings=NamedSharding(sharding.mesh, PartitionSpec()))(
            reduced, ids)
    else:
        sums = jax.jit(sums_of)(reduced, a)
    sums = np.asarray(jax.device_get(sums), np.float64)[:k]
    sizes = np.bincount(a, minlength=k + 1)[:k]
    nonempty = sizes > 0
    if not nonempty.any():
        return None
    return float(np.median(np.linalg.norm(sums[nonempty], axis=1) / sizes[nonempty]))


def cohesion(features: np.ndarray, assignment: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(size [k], cohesion [k]): the number of images of each cluster and the norm of the mean of
    their L2-normalised feature rows (NaN for an empty cluster)."""
    sums = np.zeros((k, features.shape[1]), np.float64)
    np.add.at(sums, assignment, np.asarray(features, np.float64))
    sizes = np.bincount(assignment, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.linalg.norm(sums, axis=1) / sizes
    return sizes, np.where(sizes > 0, value, np.nan)


def trend(history: list[dict]) -> dict:
    """{'clusters_still_moving': bool | None, 'nmi_prev_trend': [first, last]} over the last
    TREND_EPOCHS epochs with an nmi_prev."""
    values = [r["nmi_prev"] for r in history if r.get("nmi_prev") is not None][-TREND_EPOCHS:]
    if len(values) < 2:
        return {"clusters_still_moving": None, "nmi_prev_trend": None}
    return {"clusters_still_moving": bool(values[-1] - values[0] > STILL_MOVING),
            "nmi_prev_trend": [float(values[0]), float(values[-1])]}


def lines(signals: dict, num_epochs: int, cohesion_values: np.ndarray) -> list[str]:
    """The end-of-run lines of the label-free signals."""
    out = []
    if signals.get("pixel_agreement_nmi") is not None:
        a = signals["pixel_agreement_nmi"]
        out.append(f"label-free check: the clusters agree with k-means on raw {PIXEL_SIDE}x"
                   f"{PIXEL_SIDE} pixels (same k, {signals['pixel_agreement_images']:,} images) at "
                   f"NMI {a:.3f} (1 = the same clusters)" + (
                       "; above about 0.5 the network mostly sorts colours and layout, as the "
                       "pixels do" if a > 0.5 else ""))
    valid = cohesion_values[np.isfinite(cohesion_values)]
    if len(valid):
        lo, hi = int(np.nanargmin(cohesion_values)), int(np.nanargmax(cohesion_values))
        out.append(f"cluster cohesion (0-1, the norm of the mean of a cluster's normalised "
                   f"features): median {np.median(valid):.3f}, lowest {cohesion_values[lo]:.3f} "
                   f"(cluster {lo}), highest {cohesion_values[hi]:.3f} (cluster {hi}); per "
                   f"cluster in export/clusters.csv")
    moving, t = signals.get("clusters_still_moving"), signals.get("nmi_prev_trend")
    if moving is not None:
        span = (f"nmi_prev {t[0]:.3f} -> {t[1]:.3f} over the last epochs, 1 = the same "
                f"clustering twice")
        out.append(f"clusters still moving ({span}): more epochs (--config.num_epochs="
                   f"{2 * num_epochs}, same --workdir) may change them" if moving else
                   f"nmi_prev flat ({span}): more epochs of this run are unlikely to make the "
                   f"clusters more stable")
    return out
