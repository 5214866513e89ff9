r"""Where the time of one k-means iteration goes, per distance-matmul precision and chunk size.

    python -m dcjax.bench.kmeans_parts [--n=1281167] [--d=256] [--k=10000] \
        [--precisions=highest,tf32_3x,bf16_3x,exact_fast] [--chunks=8192,32768] [--json=PATH]

On N x d rows generated on the devices (row-sharded over all of them), milliseconds per pass over
all rows of:
  * matmul + max: the chunked `x @ c.T` with each chunk's scores reduced to their maximum (one
    read of them; a reduction over part of them would let XLA shrink the product), and the
    TFLOP/s this reaches (2 N k d flops: a lower bound on the matmul's own rate);
  * matmul + argmin: the k-means' own assignment step (nearest centroid and squared distance);
  * Lloyd iteration: the jitted iteration the k-means runs (assignment, objective, counts,
    empty-cluster split, segment sums and means, with the psums).
'exact_fast' is timed the same way: its matmul column is its one bfloat16 pass, and `rows
re-scored` the share of rows its float32 re-scoring took (random normal rows with centroids among
them: far more near-ties than clustered image features have, so an upper end of its cost).
The iteration minus the assignment is the update step's cost. Each figure is the median of
`--repeats` timed calls after a warm-up call. tf32 rows are skipped (and say why) off GPUs.
"""

from __future__ import annotations

import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from dcjax.bench.common import machine  # noqa: E402
from dcjax.clustering.kmeans import (  # noqa: E402
    PRECISIONS,
    _assign_only,
    _lloyd_iteration,
    check_precision,
)
from dcjax.sharding import AXIS, default_mesh, shard_rows  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("n", 1_281_167, "Rows.")
flags.DEFINE_integer("d", 256, "Dimension.")
flags.DEFINE_integer("k", 10_000, "Clusters.")
flags.DEFINE_list("precisions", ["highest", "tf32_3x", "bf16_3x", "exact_fast"],
                  "Distance-matmul algorithms (kmeans.PRECISION_NAMES).")
flags.DEFINE_list("chunks", ["8192", "32768"], "Rows per device scored at once.")
flags.DEFINE_integer("repeats", 5, "Timed calls per figure (the median is reported).")
flags.DEFINE_string("json", "", "Write the rows here.")


def median_ms(fn, *args, **kwargs) -> float:
    """Median milliseconds of `fn(*args, **kwargs)` over FLAGS.repeats calls, after a warm-up."""
    jax.block_until_ready(fn(*args, **kwargs))
    times = []
    for _ in range(FLAGS.repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args, **kwargs))
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def matmul_fn(mesh, chunk: int, precision: str):
    """The chunked distance matmul alone, each chunk's scores reduced to their maximum, jitted and
    sharded over the local rows of each device ('exact_fast': its bfloat16 pass)."""
    rows, rep = PartitionSpec(AXIS), PartitionSpec()

    def matmul(x, c):
        def one(xc):
            if precision == "exact_fast":  # its one bfloat16 pass
                return jnp.max(jnp.dot(xc.astype(jnp.bfloat16), c.astype(jnp.bfloat16).T,
                                       preferred_element_type=jnp.float32))
            return jnp.max(jnp.dot(xc, c.T, precision=PRECISIONS[precision],
                                   preferred_element_type=jnp.float32))

        return lax.pmax(jnp.max(lax.map(one, x.reshape(-1, chunk, x.shape[1]))), AXIS)

    return jax.jit(jax.shard_map(matmul, mesh=mesh, in_specs=(rows, rep), out_specs=rep))


def main(argv):
    del argv
    mesh = default_mesh()
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    x = jax.jit(lambda key: jax.random.normal(key, (FLAGS.n, FLAGS.d)), out_shardings=sharding)(
        jax.random.key(0))
    centroids = jax.device_put(x[:FLAGS.k] + 0.0, NamedSharding(mesh, PartitionSpec()))
    key = jax.random.key(1)
    print(f"devices: {machine()}; jax {jax.__version__}; N = {FLAGS.n:,}, d = {FLAGS.d}, "
          f"k = {FLAGS.k:,}")
    rows = []
    for precision in FLAGS.precisions:
        try:
            check_precision(precision, mesh)
        except ValueError as e:
            print(f"skipped: {e}")
            continue
        for chunk_size in (int(v) for v in FLAGS.chunks):
            xs, mask, _, chunk = shard_rows(x, chunk_size, mesh)
            mm = median_ms(matmul_fn(mesh, chunk, precision), xs, centroids)
            near = median_ms(_assign_only, xs, centroids, mesh=mesh, chunk=chunk,
                             precision=precision)
            it = median_ms(_lloyd_iteration, xs, mask, centroids, key, mesh=mesh, chunk=chunk,
                           precision=precision)
            rescored = int(_lloyd_iteration(xs, mask, centroids, key, mesh=mesh, chunk=chunk,
                                            precision=precision)[4]) / FLAGS.n
            tflops = 2 * xs.shape[0] * FLAGS.k * FLAGS.d / (mm * 1e-3) / 1e12
            rows.append(dict(precision=precision, chunk=chunk, matmul_ms=mm, assign_ms=near,
                             iteration_ms=it, matmul_tflops=tflops, rescored=rescored))
    print("\n| distance matmul | chunk rows | matmul ms | matmul TFLOP/s | + argmin ms | "
          "Lloyd iteration ms | update ms (iteration - assignment) | rows re-scored |\n"
          "|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['precision']} | {r['chunk']:,} | {r['matmul_ms']:.1f} | "
              f"{r['matmul_tflops']:.1f} | {r['assign_ms']:.1f} | {r['iteration_ms']:.1f} | "
              f"{r['iteration_ms'] - r['assign_ms']:.1f} | {r['rescored']:.1%} |")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(dict(devices=machine(), n=FLAGS.n, d=FLAGS.d, k=FLAGS.k, rows=rows), f,
                      indent=1)


if __name__ == "__main__":
    app.run(main)
