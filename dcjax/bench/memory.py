r"""Memory of one DeepCluster clustering step at ImageNet scale, per device and per host.

    python -m dcjax.bench.memory [--images=1281167] [--devices=8] [--dim=4096] [--pca_dim=256]
                                 [--k=10000] [--chunk=8192] [--measure_rows=N]

The features of an epoch never meet on one host or device: each device holds its rows of the
device-major buffer extraction writes (N / devices x D float32), PCA fits from a psum of per-device
covariances (D x D), whitening writes N / devices x dim per device, and k-means scores at most
chunk x k per device at a time; only int32 assignments reach the hosts. This prints that arithmetic
for the given sizes and then *measures* one device's share on this machine: a process with one CPU
device holding N / devices rows (or --measure_rows) runs the same pca_whiten + one k-means
iteration, and its peak resident memory is read after each phase. The original keeps the whole
N x D float32 array in host memory (plus faiss' copies) on one machine.
"""

from __future__ import annotations

import math
import resource
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("images", 1_281_167, "N: images clustered each epoch (ImageNet train).")
flags.DEFINE_integer("devices", 8, "Devices sharing the features.")
flags.DEFINE_integer("dim", 4096, "Feature dimension (fc7).")
flags.DEFINE_integer("pca_dim", 256, "PCA-whitening output dimension.")
flags.DEFINE_integer("k", 10_000, "Clusters.")
flags.DEFINE_integer("chunk", 8192, "k-means / PCA chunk rows per device.")
flags.DEFINE_integer("measure_rows", 0, "Rows for the measured shard (0: images / devices).")

GB = 1024 ** 3


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def arithmetic(n: int, devices: int, d: int, dim: int, k: int, chunk: int) -> list[tuple]:
    rows = math.ceil(n / devices)
    f = 4  # float32 bytes
    return [
        ("features (fc7 buffer), per device", rows * d * f),
        ("PCA covariance + eigenvectors, per device", 2 * d * d * f),
        ("PCA chunk temporaries, per device", 2 * chunk * d * f),
        ("whitened features, per device", rows * dim * f),
        ("k-means scores (chunk x k), per device", chunk * k * f),
        ("k-means centroids + sums, per device", 2 * k * dim * f),
        ("assignment int32 + row index int64, per host", n * (4 + 8)),
        ("original: N x D float32 on the host", n * d * f),
    ]


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dcjax.clustering.kmeans import kmeans
    from dcjax.clustering.pca import pca_whiten

    n, ndev, d, dim, k, chunk = (FLAGS.images, FLAGS.devices, FLAGS.dim, FLAGS.pca_dim, FLAGS.k,
                                 FLAGS.chunk)
    print(f"arithmetic: N={n:,}, {ndev} devices, D={d}, PCA {dim}, k={k:,}, chunk {chunk}")
    print("| item | bytes | GiB |\n|---|---|---|")
    items = arithmetic(n, ndev, d, dim, k, chunk)
    for name, b in items:
        print(f"| {name} | {b:,} | {b / GB:.3f} |")
    per_device = sum(b for name, b in items if name.endswith("per device"))
    print(f"| total per device (sum of the above) | {per_device:,} | {per_device / GB:.3f} |")

    rows = FLAGS.measure_rows or math.ceil(n / ndev)
    rows = max(chunk, rows - rows % chunk)
    print(f"\nmeasured on one {jax.devices()[0].platform} device: one device's share, {rows:,} rows")
    base = rss_gb()
    t0 = time.time()
    # Clustered synthetic features, generated on the device (the host never holds a copy).
    centres = jax.random.normal(jax.random.key(0), (1000, d), jnp.float32)
    # Written chunk by chunk into one buffer, as extraction writes batches: the generator's own
    # temporaries stay at chunk x D.

    def fill(buffer):
        def body(i, buffer):
            key_i, key_x = jax.random.split(jax.random.fold_in(jax.random.key(1), i))
            rows_i = (centres[jax.random.randint(key_i, (chunk,), 0, 1000)]
                      + 0.5 * jax.random.normal(key_x, (chunk, d), jnp.float32))
            return jax.lax.dynamic_update_slice(buffer, rows_i, (i * chunk, 0))

        return jax.lax.fori_loop(0, rows // chunk, body, buffer)

    features = jax.jit(fill, donate_argnums=0)(jnp.zeros((rows, d), jnp.float32))
    jax.block_until_ready(features)
    after_features = rss_gb()
    t1 = time.time()
    reduced, _ = pca_whiten(features, dim, chunk_size=chunk)
    jax.block_until_ready(reduced)
    after_pca = rss_gb()
    t2 = time.time()
    del features
    result = kmeans(reduced, min(k, rows), iterations=1, seed=0, chunk_size=chunk)
    after_kmeans = rss_gb()
    t3 = time.time()
    assert result.assignment.shape == (rows,) and np.all(result.assignment >= 0)
    feature_gb = rows * d * 4 / GB
    print("| phase | peak RSS GiB | above the features GiB | seconds |\n|---|---|---|---|")
    print(f"| start (jax + libraries) | {base:.2f} | - | - |")
    print(f"| features generated ({feature_gb:.2f} GiB) | {after_features:.2f} | - | {t1 - t0:.1f} |")
    print(f"| PCA-whitening fit + apply | {after_pca:.2f} | {after_pca - base - feature_gb:.2f} | "
          f"{t2 - t1:.1f} |")
    print(f"| k-means, 1 iteration | {after_kmeans:.2f} | {after_kmeans - base - feature_gb:.2f} | "
          f"{t3 - t2:.1f} |")


if __name__ == "__main__":
    app.run(main)
