r"""The phases of one DeepCluster epoch at ImageNet scale, measured on this machine's devices, and
the epoch time they project on 1 and on G devices.

    python -m dcjax.bench.imagenet_epoch [--batch=256] [--dtypes=float32,bfloat16] \
        [--cluster_rows=1281167] [--k=10000] [--iterations=20] [--devices_projected=1,8] \
        [--json=PATH]

Measured on synthetic device-resident inputs (so the input pipeline is not part of it):
  * train step (forward + backward + SGD, BatchNorm, Sobel, k-way head) of AlexNet-BN at 224 px,
    images/s per compute dtype, on one device;
  * feature extraction (eval-mode forward to fc7), images/s per dtype, on one device;
  * PCA-whitening 4096 -> 256 of `cluster_rows` fc7-sized rows and k-means (k, iterations) of
    `cluster_rows` 256-d rows, generated on the devices and row-sharded over all of them.
Projection for N = `images` per epoch on G devices: N / (G x extraction images/s) + PCA + k-means
(each scaled linearly from `cluster_rows` to N and divided by G / measured devices) + N / (G x train
images/s). It assumes linear data-parallel scaling and leaves out the input pipeline and the
all-reduces: a projection, printed as one, beside the paper's 12 days for 500 epochs on one P100
(about 35 min an epoch). On a CPU pass small sizes (the test does:
`--batch=8 --steps=1 --cluster_rows=4096 --k=64 --model=alexnet_small --image_size=32`).
"""

from __future__ import annotations

import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from dcjax.bench.common import machine, network_rates  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "alexnet", "Architecture (alexnet: the ImageNet geometry).")
flags.DEFINE_integer("image_size", 224, "Input size.")
flags.DEFINE_integer("batch", 256, "Images per train / extraction step.")
flags.DEFINE_integer("steps", 20, "Timed steps per measurement (after 2 warm-up steps).")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes to measure.")
flags.DEFINE_integer("k", 10_000, "Clusters (and the head's width).")
flags.DEFINE_integer("feature_dim", 4096, "fc7 width: the PCA input dimension.")
flags.DEFINE_integer("pca_dim", 256, "PCA-whitening output dimension.")
flags.DEFINE_integer("cluster_rows", 1_281_167, "Rows for the PCA and k-means measurements.")
flags.DEFINE_integer("iterations", 20, "k-means iterations.")
flags.DEFINE_list("kmeans_precisions", ["highest", "tf32_3x", "bf16_3x"],
                  "k-means distance-matmul algorithms to time (the first is the reference).")
flags.DEFINE_list("kmeans_chunks", ["8192", "32768"], "k-means chunk sizes (rows per device) to "
                  "time with each precision.")
flags.DEFINE_integer("images", 1_281_167, "Images per projected epoch (ImageNet train).")
flags.DEFINE_list("devices_projected", ["1", "8"], "Device counts to project the epoch for.")
flags.DEFINE_float("paper_minutes", 12 * 24 * 60 / 500, "The original's minutes per epoch "
                   "(12 days for 500 epochs on one P100).")
flags.DEFINE_string("json", "", "Write the measurements and projections here.")

PAPER = "original (paper): 12 days / 500 epochs, 1 P100"


def _sharded_normal(rows: int, dim: int, seed: int) -> tuple[jax.Array, np.ndarray]:
    """[R, dim] float32 N(0, 1) made on the devices, row-sharded over all of them, R = `rows`
    rounded up to whole 8,192-row chunks per device, with the [R] mask of the `rows` that count:
    the padded buffer feature extraction writes in training."""
    from jax.sharding import NamedSharding, PartitionSpec

    from dcjax.sharding import AXIS, default_mesh

    mesh = default_mesh()
    block = mesh.devices.size * min(8192, -(-rows // mesh.devices.size))
    padded = -(-rows // block) * block
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    make = jax.jit(lambda key: jax.random.normal(key, (padded, dim), jnp.float32),
                   out_shardings=sharding)
    return make(jax.random.key(seed)), np.arange(padded) < rows


def clustering_seconds() -> tuple[float, list[dict]]:
    """(PCA-whitening s, one row per k-means (precision, chunk): seconds and final objective), each
    timed after a warm-up on the same shapes."""
    from dcjax.clustering.kmeans import kmeans
    from dcjax.clustering.pca import pca_whiten

    x, valid = _sharded_normal(FLAGS.cluster_rows, FLAGS.feature_dim, 0)
    jax.block_until_ready(pca_whiten(x, FLAGS.pca_dim, valid=valid)[0])
    t = time.perf_counter()
    y, _ = pca_whiten(x, FLAGS.pca_dim, valid=valid)
    jax.block_until_ready(y)
    pca_s = time.perf_counter() - t
    del x
    rows = []
    for precision in FLAGS.kmeans_precisions:
        for chunk in (int(v) for v in FLAGS.kmeans_chunks):
            kw = dict(valid=valid, precision=precision, chunk_size=chunk)
            try:
                kmeans(y, FLAGS.k, iterations=1, **kw)  # compile on these shapes
                t = time.perf_counter()
                result = kmeans(y, FLAGS.k, iterations=FLAGS.iterations, **kw)
                seconds = time.perf_counter() - t
                rows.append(dict(precision=precision, chunk=chunk, seconds=seconds,
                                 objective=float(result.objective[-1]),
                                 nonempty=int(len(np.unique(
                                     result.assignment[result.assignment >= 0])))))
            except (ValueError, jax.errors.JaxRuntimeError) as e:
                print(f"k-means precision={precision} chunk={chunk}: "
                      f"{str(e).splitlines()[0][:200]}")
    if not rows:
        raise SystemExit("no k-means configuration ran")
    return pca_s, rows


def choose_kmeans(rows: list[dict], tolerance: float = 1e-3) -> dict:
    """The fastest row whose final objective is within `tolerance` (relative) of the reference
    (the first precision's best-timed row): what a run would configure."""
    ref_rows = [r for r in rows if r["precision"] == rows[0]["precision"]]
    ref = min(ref_rows, key=lambda r: r["seconds"])
    ok = [r for r in rows if abs(r["objective"] - ref["objective"]) <= tolerance * ref["objective"]]
    return min(ok, key=lambda r: r["seconds"])


def project(m: dict, devices: int) -> dict:
    """Minutes of each phase of one epoch of `images` on `devices` devices (linear scaling)."""
    n, measured = FLAGS.images, m["cluster_devices"]
    scale = n / m["cluster_rows"] * measured / devices
    phases = {
        "extract": n / (devices * m["extract_ips"]) / 60,
        "pca": m["pca_s"] * scale / 60,
        "kmeans": m["kmeans_s"] * scale / 60,
        "train": n / (devices * m["train_ips"]) / 60,
    }
    return {**phases, "epoch": sum(phases.values())}


def main(argv):
    del argv
    print(f"devices: {machine()}; jax {jax.__version__}; model {FLAGS.model} "
          f"{FLAGS.image_size} px, batch {FLAGS.batch}, head k = {FLAGS.k}")
    measured = []
    pca_s, kmeans_rows = clustering_seconds()
    chosen = choose_kmeans(kmeans_rows)
    kmeans_s, objective = chosen["seconds"], chosen["objective"]
    for dtype in FLAGS.dtypes:
        train_ips, extract_ips = network_rates(
            FLAGS.model, FLAGS.image_size, FLAGS.batch, FLAGS.k, FLAGS.steps,
            fc_dim=FLAGS.feature_dim, dtype=dtype, extraction=True)
        measured.append(dict(dtype=dtype, train_ips=train_ips, extract_ips=extract_ips,
                             pca_s=pca_s, kmeans_s=kmeans_s, kmeans_objective=objective,
                             kmeans_precision=chosen["precision"], kmeans_chunk=chosen["chunk"],
                             cluster_rows=FLAGS.cluster_rows, cluster_devices=jax.device_count()))

    print(f"\nk-means of {FLAGS.cluster_rows:,} PCA-whitened rows, k = {FLAGS.k}, "
          f"{FLAGS.iterations} iterations, sharded over {jax.device_count()} device(s)")
    print("| distance matmul | chunk rows | seconds | final objective | vs first row's objective |"
          " non-empty clusters |\n|---|---|---|---|---|---|")
    for r in kmeans_rows:
        print(f"| {r['precision']} | {r['chunk']:,} | {r['seconds']:.2f} | {r['objective']:.6g} | "
              f"{r['objective'] / kmeans_rows[0]['objective']:.6f} | {r['nonempty']:,} |")
    print(f"(projection below uses {chosen['precision']}, chunk {chosen['chunk']:,}: the fastest "
          "within 0.1% of the reference objective)")
    print("\nMeasured (synthetic inputs on the devices; train and extraction on one device, "
          f"PCA and k-means sharded over {jax.device_count()})")
    print("| dtype | train img/s | extraction img/s | PCA "
          f"{FLAGS.feature_dim}->{FLAGS.pca_dim} s | k-means s |")
    print("|---|---|---|---|---|")
    for m in measured:
        print(f"| {m['dtype']} | {m['train_ips']:,.0f} | {m['extract_ips']:,.0f} | "
              f"{m['pca_s']:.2f} | {m['kmeans_s']:.2f} |")
    print(f"(PCA and k-means: {FLAGS.cluster_rows:,} rows, k = {FLAGS.k}, {FLAGS.iterations} "
          "iterations, float32 whatever the network's dtype)")

    print(f"\nProjected epoch of {FLAGS.images:,} images, minutes (linear data-parallel scaling, "
          "input pipeline and all-reduces left out)")
    print("| dtype | devices | extract | PCA | k-means | train | epoch | vs original |")
    print("|---|---|---|---|---|---|---|---|")
    projections = []
    for m in measured:
        for g in (int(v) for v in FLAGS.devices_projected):
            p = project(m, g)
            projections.append(dict(dtype=m["dtype"], devices=g, **p))
            print(f"| {m['dtype']} | {g} | {p['extract']:.2f} | {p['pca']:.2f} | "
                  f"{p['kmeans']:.2f} | {p['train']:.2f} | {p['epoch']:.2f} | "
                  f"{FLAGS.paper_minutes / p['epoch']:.1f}x |")
    print(f"| {PAPER} | 1 | | | | | {FLAGS.paper_minutes:.1f} | 1.0x |")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(dict(devices=machine(), measured=measured, projected=projections,
                           kmeans=kmeans_rows, paper_minutes=FLAGS.paper_minutes), f, indent=1)


if __name__ == "__main__":
    app.run(main)
