"""k-means in JAX, sharded over every device: DeepCluster's clustering step (docs/design.md 1.3).

Lloyd iterations from k distinct random points. Each iteration, on the rows each device holds:
  1. assign every row to its nearest centroid by `||c||^2 - 2 x.c` (matmul at float32 accuracy:
     `precision='highest'`, or an accelerator's tensor-core algorithm that keeps float32 inputs
     and accumulation, `PRECISIONS`; or `'exact_fast'`, one bfloat16 pass plus float32 re-scoring
     of the rows it cannot decide, whose assignment is `'highest'`'s, see `_nearest_exact_fast`),
     `chunk` rows at a time, so at most chunk x k scores exist per device and no N x k array
     exists anywhere; the objective is the sum of squared distances of this assignment;
  2. split empty clusters: while a cluster is empty, choose a donor with probability proportional
     to (size - 1), replace the two centroids by the donor's times (1 + eps) and (1 - eps) in
     alternating coordinates (eps = 1/1024, faiss' `split_clusters`), and give the empty cluster the
     donor's points nearer its new centroid (half of them, by rank, when that leaves either side
     empty, e.g. for duplicate points). So with N >= k no cluster is empty after any iteration;
  3. centroids = per-cluster means, from segment sums and counts added over devices with `psum`.
The random choices use one key shared by every device, so 1 and many devices give the same result.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dcjax.sharding import AXIS, check_features, check_valid, put, shard_rows

HIGHEST = lax.Precision.HIGHEST
SPLIT_EPS = 1.0 / 1024.0

# The distance matmul's algorithm. 'highest': float32 throughout (XLA's Precision.HIGHEST). The
# others split each float32 operand into several lower-precision parts multiplied on tensor cores
# and summed in float32 (3 passes of TF32 or bfloat16, 6 of bfloat16): close to float32 accuracy
# at tensor-core speed on GPUs. TF32 exists on NVIDIA GPUs only.
PRECISIONS = {
    "highest": HIGHEST,
    "tf32_3x": lax.DotAlgorithmPreset.TF32_TF32_F32_X3,
    "bf16_3x": lax.DotAlgorithmPreset.BF16_BF16_F32_X3,
    "bf16_6x": lax.DotAlgorithmPreset.BF16_BF16_F32_X6,
}


# Every value of `precision`: the matmul algorithms above, and 'exact_fast' (`_nearest_exact_fast`).
PRECISION_NAMES = (*PRECISIONS, "exact_fast")


def check_precision(precision: str, mesh: Mesh | None = None) -> None:
    """ValueError for an unknown name, or a TF32 algorithm where the devices are not GPUs."""
    if precision not in PRECISION_NAMES:
        raise ValueError(f"k-means precision {precision!r} must be one of {PRECISION_NAMES}")
    platform = (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
    if precision.startswith("tf32") and platform != "gpu":
        raise ValueError(f"k-means precision {precision!r} needs GPU devices (these are "
                         f"{platform}); use 'highest' or a bf16 one")


@dataclasses.dataclass
class KMeansResult:
    centroids: np.ndarray  # [k, D] float32
    assignment: np.ndarray  # [N] int32
    objective: np.ndarray  # [iterations]: sum of squared distances at each assignment step
    splits: np.ndarray  # [iterations]: empty clusters split in each iteration
    # [iterations]: rows whose assignment was re-scored in float32 ('exact_fast'; else zeros)
    rescored: np.ndarray | None = None

    @property
    def num_splits(self) -> int:
        return int(self.splits.sum())

    @property
    def rescored_share(self) -> float:
        """Share of the clustered rows re-scored in float32, over all iterations (0 unless
        precision='exact_fast')."""
        if self.rescored is None or not len(self.rescored):
            return 0.0
        rows = int(np.sum(self.assignment >= 0))
        return float(np.sum(self.rescored)) / max(1, rows * len(self.rescored))


def _highest_chunk(xc, centroids, c_sq, algorithm=HIGHEST):
    """One chunk of rows [chunk, D] -> (nearest centroid, squared distance) with the given matmul."""
    scores = c_sq[None, :] - 2.0 * jnp.dot(xc, centroids.T, precision=algorithm,
                                           preferred_element_type=jnp.float32)  # [chunk, k]
    best = jnp.argmin(scores, axis=1).astype(jnp.int32)
    dist = jnp.min(scores, axis=1) + jnp.sum(xc * xc, axis=1)
    return best, jnp.maximum(dist, 0.0)


def _nearest(x, centroids, chunk: int, precision: str = "highest"):
    """Local rows [n, D] -> (nearest centroid [n] int32, squared distance [n], rows re-scored [n]
    bool), chunk rows at a time."""
    if precision == "exact_fast":
        return _nearest_exact_fast(x, centroids, chunk)
    n, d = x.shape
    c_sq = jnp.sum(centroids * centroids, axis=1)
    algorithm = PRECISIONS[precision]
    best, dist = lax.map(lambda xc: _highest_chunk(xc, centroids, c_sq, algorithm),
                         x.reshape(n // chunk, chunk, d))
    return best.reshape(n), dist.reshape(n), jnp.zeros((n,), bool)


# Unit roundoff of float32 and bfloat16 (round to nearest).
_U32, _U16 = 2.0 ** -24, 2.0 ** -8


def _bf16_rounded(v):
    """float32 `v` rounded to bfloat16's values (round to nearest even), kept in float32: the
    operand the bfloat16 pass multiplies. Not `v.astype(bfloat16).astype(float32)`: XLA may drop
    that round trip as an excess-precision no-op (XLA:GPU does, measured on an H200: the rounding
    errors came out 0, the bounds too small, and 0.4% of the rows 'decided' wrongly);
    reduce_precision is the rounding XLA keeps."""
    return lax.reduce_precision(v, exponent_bits=8, mantissa_bits=7)


def _nearest_exact_fast(x, centroids, chunk: int):
    """`_nearest(..., 'highest')`'s assignment at the cost of one bfloat16 matmul plus a float32
    re-scoring of the rows that pass cannot decide (docs/design.md, "exact_fast").

    1. Every score `||c_j||^2 - 2 x.c_j` is computed once with bfloat16 operands and float32
       accumulation; each row keeps its best (b) and second-best scores.
    2. Bound, per row, how far a score of that pass (E_low) and one of the float32 pass (E_hi) can
       be from the exact value, from the operands' norms alone (the rounding errors dx = x - bf16(x)
       and dc_j = c_j - bf16(c_j) are exact in float32):
         |x.c - bf16(x).bf16(c)| <= ||dx|| max||c|| + ||bf16(x)|| max||dc||,
       float32 accumulation of D products <= g ||x|| max||c|| with g = 2 D u32 (twice the usual
       bound: it also covers accumulators that truncate, as tensor cores may), and the final
       subtraction's rounding <= u32 (max||c||^2 + 2 ||x|| max||c||).
    3. If the gap between the second-best and best scores exceeds 2 (E_low + E_hi), every other
       score is above b's in exact arithmetic by more than 2 E_hi, so the float32 pass picks b
       too, with no tie: b is the assignment. Its squared distance is computed in float32.
    4. The other rows are gathered `chunk` at a time and scored by exactly the float32 pass of
       `'highest'` (same function, same shapes), so their results are its results bit for bit,
       ties broken the same way (lowest index). Only these rows pay for a float32 matmul.
    On CPU the bfloat16 pass runs as an emulation (correct, not faster); it is for accelerators.
    """
    n, d = x.shape
    c_sq = jnp.sum(centroids * centroids, axis=1)
    c16 = centroids.astype(jnp.bfloat16)
    c16f = _bf16_rounded(centroids)
    c_max = jnp.sqrt(jnp.max(c_sq))
    c16_max = jnp.sqrt(jnp.max(jnp.sum(c16f * c16f, axis=1)))
    dc_max = jnp.sqrt(jnp.max(jnp.sum((centroids - c16f) ** 2, axis=1)))
    csq_max = jnp.max(c_sq)
    g = 2.0 * d * _U32
    safety = 1.01  # the norms above are themselves rounded (relative error ~ D u32)

    def one_chunk(xc):
        x16 = xc.astype(jnp.bfloat16)
        x16f = _bf16_rounded(xc)
        scores = c_sq[None, :] - 2.0 * jnp.dot(x16, c16.T, preferred_element_type=jnp.float32)
        best = jnp.argmin(scores, axis=1).astype(jnp.int32)
        first = jnp.min(scores, axis=1)
        others = jnp.where(jnp.arange(scores.shape[1])[None, :] == best[:, None], jnp.inf, scores)
        gap = jnp.min(others, axis=1) - first  # inf when k = 1
        x_sq = jnp.sum(xc * xc, axis=1)
        xn, x16n = jnp.sqrt(x_sq), jnp.sqrt(jnp.sum(x16f * x16f, axis=1))
        dxn = jnp.sqrt(jnp.sum((xc - x16f) ** 2, axis=1))
        e_low = (2.0 * (dxn * c_max + x16n * dc_max + g * x16n * c16_max)
                 + _U32 * (csq_max + 2.0 * x16n * c16_max))
        e_hi = 2.0 * g * xn * c_max + _U32 * (csq_max + 2.0 * xn * c_max)
        rescore = ~(gap > 2.0 * safety * (e_low + e_hi))
        cb = centroids[best]
        dist = c_sq[best] - 2.0 * jnp.sum(xc * cb, axis=1) + x_sq
        return best, jnp.maximum(dist, 0.0), rescore

    best, dist, rescore = lax.map(one_chunk, x.reshape(n // chunk, chunk, d))
    best, dist, rescore = best.reshape(n), dist.reshape(n), rescore.reshape(n)
    # The undecided rows' indices first (in row order), then n as padding.
    idx = jnp.nonzero(rescore, size=n, fill_value=n)[0].astype(jnp.int32)
    rounds = (jnp.sum(rescore.astype(jnp.int32)) + chunk - 1) // chunk

    def body(i, carry):
        best, dist = carry
        rows = lax.dynamic_slice(idx, (i * chunk,), (chunk,))
        b, dd = _highest_chunk(jnp.take(x, rows, axis=0, mode="clip"), centroids, c_sq)
        return best.at[rows].set(b, mode="drop"), dist.at[rows].set(dd, mode="drop")

    best, dist = lax.fori_loop(0, rounds, body, (best, dist))
    return best, dist, rescore


def _global_rank(member):
    """Rank of each local True in `member` among all devices' Trues, in global row order."""
    local = jnp.sum(member.astype(jnp.int32))
    counts = lax.all_gather(local, AXIS)
    offset = jnp.sum(jnp.where(jnp.arange(counts.shape[0]) < lax.axis_index(AXIS), counts, 0))
    return jnp.cumsum(member.astype(jnp.int32)) - 1 + offset


def _split_empty(x, assign, centroids, counts, key):
    """Splits donors into empty clusters until none is empty (see module docstring)."""
    k, d = centroids.shape
    sign = jnp.where(jnp.arange(d) % 2 == 0, 1.0, -1.0)

    def cond(carry):
        _, _, counts, nsplit, _ = carry
        return jnp.any(counts == 0) & (nsplit < k)

    def body(carry):
        assign, centroids, counts, nsplit, key = carry
        key, sub = jax.random.split(key)
        ci = jnp.argmax(counts == 0)
        weight = jnp.maximum(counts - 1, 0).astype(jnp.float32)
        cj = jax.random.categorical(sub, jnp.where(weight > 0, jnp.log(weight), -jnp.inf))
        c = centroids[cj]
        c_i, c_j = c * (1.0 + sign * SPLIT_EPS), c * (1.0 - sign * SPLIT_EPS)
        centroids = centroids.at[ci].set(c_i).at[cj].set(c_j)
        member = assign == cj
        d_i = jnp.sum((x - c_i) ** 2, axis=1)
        d_j = jnp.sum((x - c_j) ** 2, axis=1)
        to_i = member & (d_i < d_j)
        n_i = lax.psum(jnp.sum(to_i.astype(jnp.int32)), AXIS)
        degenerate = (n_i == 0) | (n_i == counts[cj])
        by_rank = member & (_global_rank(member) % 2 == 1)
        to_i = jnp.where(degenerate, by_rank, to_i)
        n_i = jnp.where(degenerate, counts[cj] // 2, n_i)
        assign = jnp.where(to_i, ci, assign).astype(assign.dtype)
        counts = counts.at[ci].set(n_i).at[cj].add(-n_i)
        return assign, centroids, counts, nsplit + 1, key

    assign, centroids, counts, nsplit, _ = lax.while_loop(
        cond, body, (assign, centroids, counts, jnp.zeros((), jnp.int32), key))
    return assign, centroids, counts, nsplit


@functools.partial(jax.jit, static_argnames=("mesh", "chunk", "precision"))
def _lloyd_iteration(x, mask, centroids, key, *, mesh: Mesh, chunk: int, precision: str):
    k = centroids.shape[0]
    rows, rep = PartitionSpec(AXIS), PartitionSpec()

    def local(x, mask, centroids, key):
        assign, dist, rescore = _nearest(x, centroids, chunk, precision)
        assign = jnp.where(mask, assign, k)  # padding rows go to an extra bucket k
        objective = lax.psum(jnp.sum(jnp.where(mask, dist, 0.0)), AXIS)
        rescored = lax.psum(jnp.sum((rescore & mask).astype(jnp.int32)), AXIS)
        ones = mask.astype(jnp.int32)
        counts = lax.psum(jax.ops.segment_sum(ones, assign, k + 1)[:k], AXIS)
        assign, centroids, counts, nsplit = _split_empty(x, assign, centroids, counts, key)
        sums = lax.psum(jax.ops.segment_sum(x, assign, k + 1)[:k], AXIS)
        means = sums / jnp.maximum(counts, 1)[:, None].astype(sums.dtype)
        centroids = jnp.where((counts > 0)[:, None], means, centroids)
        return centroids, assign, objective, nsplit, rescored

    return jax.shard_map(local, mesh=mesh, in_specs=(rows, rows, rep, rep),
                         out_specs=(rep, rows, rep, rep, rep))(x, mask, centroids, key)


@functools.partial(jax.jit, static_argnames=("mesh", "chunk", "precision"))
def _assign_only(x, centroids, *, mesh: Mesh, chunk: int, precision: str):
    rows, rep = PartitionSpec(AXIS), PartitionSpec()
    return jax.shard_map(lambda x, c: _nearest(x, c, chunk, precision)[:2], mesh=mesh,
                         in_specs=(rows, rep),
                         out_specs=(rows, rows))(x, centroids)


def to_host(x: jax.Array) -> np.ndarray:
    """A (possibly multi-host) global array as one numpy array on every process."""
    if jax.process_count() > 1 and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def check_k(k: int, n: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k={k!r} must be a positive integer")
    if k > n:
        raise ValueError(f"k={k} is larger than the number of points N={n}")


def init_centroids(features, k: int, seed: int, valid: np.ndarray | None = None,
                   row_ids: np.ndarray | None = None) -> jax.Array:
    """k distinct random rows of `features` (seeded; among the `valid` rows if given): [k, D].

    With `row_ids` [N] (each row's dataset index, -1 on padding: `Features.image`), the draw is of
    dataset indices, and the rows come in their order: the same images, in the same order, wherever
    the devices, the batch size or the padding put them in the buffer."""
    rng = np.random.default_rng(seed)
    if row_ids is None:
        candidates = np.arange(features.shape[0]) if valid is None else np.flatnonzero(valid)
        idx = np.sort(rng.choice(candidates, size=k, replace=False))
    else:
        ids = np.asarray(row_ids)
        keep = ids >= 0 if valid is None else np.asarray(valid, bool) & (ids >= 0)
        positions = np.flatnonzero(keep)
        positions = positions[np.argsort(ids[positions], kind="stable")]  # by dataset index
        idx = positions[np.sort(rng.choice(len(positions), size=k, replace=False))]
    if isinstance(features, np.ndarray):
        return features[idx].astype(np.float32)
    # A host copy of k rows: valid input to the jitted iterations on any number of processes.
    return to_host(_take_rows(features, idx))


@jax.jit
def _take_rows(features, idx):
    # Module-level, the indices an argument: one compile per shape, not one per call.
    return jnp.take(features, idx, axis=0).astype(jnp.float32)


def kmeans(features, k: int, *, iterations: int = 20, seed: int = 0, chunk_size: int = 8192,
           initial_centroids=None, mesh: Mesh | None = None, valid: np.ndarray | None = None,
           verbose: bool = False, precision: str = "highest",
           on_iteration: Callable[[int, int], None] | None = None,
           row_ids: np.ndarray | None = None) -> KMeansResult:
    """Clusters `features` [N, D] (numpy, or a jax.Array sharded by rows) into k clusters.

    Returns the centroids [k, D], the assignment [N] int32 (every cluster non-empty when N >= k),
    the objective of each iteration and the number of empty-cluster splits in each. With `valid`
    [N] bool only those rows are clustered; the others get assignment -1. `precision` names the
    distance matmul's algorithm (`PRECISIONS`). `on_iteration(done, total)` runs after each
    iteration has finished (it may raise to stop). `row_ids` [N]: each row's dataset index, so the
    initial centroids are the same images on any device layout (`init_centroids`).
    """
    rows, d = check_features(features, "features")
    check_precision(precision, mesh)
    n = check_valid(valid, rows)
    check_k(k, n)
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations={iterations!r} must be a positive integer")
    if initial_centroids is None:
        centroids = init_centroids(features, k, seed, valid, row_ids)
    else:
        if tuple(initial_centroids.shape) != (k, d):
            raise ValueError(f"initial centroids have shape {tuple(initial_centroids.shape)}, "
                             f"expected ({k}, {d})")
        centroids = np.asarray(initial_centroids, np.float32)
    x, mask, mesh, chunk = shard_rows(features, chunk_size, mesh, valid)
    # Replicated on the mesh as each iteration returns them, so the first iteration has the others'
    # signature: one compile per shape (host centroids compiled a second variant at iteration 2,
    # which benchmarks that warm up on one iteration timed: about 1 s a call on an H200).
    centroids = put(centroids, NamedSharding(mesh, PartitionSpec()))
    key = jax.random.key(seed)
    objective, splits, rescored = [], [], []
    from tqdm import tqdm

    for it in tqdm(range(iterations), desc="k-means", disable=None if verbose else True,
                   leave=False):
        centroids, assign, obj, nsplit, nrescored = _lloyd_iteration(
            x, mask, centroids, jax.random.fold_in(key, it), mesh=mesh, chunk=chunk,
            precision=precision)
        objective.append(obj)
        splits.append(nsplit)
        rescored.append(nrescored)
        if on_iteration is not None:
            jax.block_until_ready(obj)
            on_iteration(it + 1, iterations)
    assignment = to_host(assign)[:rows].astype(np.int32)
    assignment[assignment == k] = -1  # rows left out by `valid`
    return KMeansResult(centroids=np.asarray(centroids),
                        assignment=assignment,
                        objective=np.asarray(jax.device_get(objective), np.float64),
                        splits=np.asarray(jax.device_get(splits), np.int64),
                        rescored=np.asarray(jax.device_get(rescored), np.int64))


def assign(features, centroids, *, chunk_size: int = 8192, mesh: Mesh | None = None,
           precision: str = "highest") -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid [N] int32 and squared distance [N] of each row of `features`."""
    n, d = check_features(features, "features")
    check_precision(precision, mesh)
    if centroids.ndim != 2 or centroids.shape[1] != d:
        raise ValueError(f"centroids have shape {tuple(centroids.shape)}, features dimension {d}")
    x, _, mesh, chunk = shard_rows(features, chunk_size, mesh)
    best, dist = _assign_only(x, np.asarray(centroids, np.float32), mesh=mesh, chunk=chunk,
                              precision=precision)
    return to_host(best)[:n], to_host(dist)[:n]
