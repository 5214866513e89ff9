r"""Memory per device of a config's training at its own scale, without its data (a dry run).

    python -m dcjax.bench.train_memory --config=configs/imagenet_resnet50_deepcluster_v2.py \
        [--images=1281167] [--devices=0] [--activations]

Builds the config's method network (dcjax.methods, `initial_network`) by shape only and prints, per
device, what training holds: parameters, optimiser state and gradients (replicated), and the
method's epoch-level arrays: for DeepCluster the extracted features, their PCA-whitened rows and the
k-means scores of one chunk (sharded over the devices); for DeepCluster-v2 the memory bank
(`crops_for_assign` x rows x feat_dim, sharded), the prototypes (replicated) and one head's k-means
scores. `--devices` 0 takes batch_size / 64 (64 images per device, as both references train).
`--activations` also compiles the forward and backward pass of one device's batch (every view of
the config, all heads) on this machine's first device and reads XLA's temporary-buffer size: an
estimate for another backend (a GPU's fusions and cuDNN workspaces differ), which takes minutes for
a ResNet-50 on a CPU.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "The config file to size.", lock_config=True)
flags.DEFINE_integer("images", 1_281_167, "Training images (default: ImageNet's train split).")
flags.DEFINE_integer("devices", 0, "Devices sharing the batch (0: batch_size / 64).")
flags.DEFINE_bool("activations", False, "Compile one device's forward + backward and read XLA's "
                  "temporary memory (slow on a CPU).")

GIB = 1024 ** 3


def sizes(config, images: int, devices: int, params_bytes: int) -> list[tuple[str, int]]:
    """(item, bytes per device) of training `config` on `images` images over `devices`."""
    f = 4  # float32
    rows = math.ceil(images / devices)
    out = [("parameters (replicated)", params_bytes),
           ("optimiser momentum (replicated)", params_bytes),
           ("gradients (replicated, within a step)", params_bytes)]
    if config.method == "deepcluster_v2":
        v = config.deepcluster_v2
        bank_rows = (images // config.batch_size) * config.batch_size
        per = math.ceil(bank_rows / devices)
        out += [(f"memory bank ({len(v.crops_for_assign)} x {bank_rows:,} x {v.feat_dim}, "
                 f"sharded)", len(v.crops_for_assign) * per * v.feat_dim * f),
                ("bank image index + label (int32, sharded)", 2 * per * 4),
                (f"prototypes ({' + '.join(str(k) for k in v.prototypes)} x {v.feat_dim})",
                 sum(v.prototypes) * v.feat_dim * f),
                (f"k-means scores of one chunk (8,192 x {max(v.prototypes):,})",
                 8192 * max(v.prototypes) * f),
                ("assignments (int32, every image, every head; host)",
                 len(v.prototypes) * images * 4)]
    else:
        c = config.clustering
        out += [("extracted features (sharded)", rows * feature_dim(config) * f),
                (f"PCA-whitened rows ({c.pca_dim}, sharded)", rows * c.pca_dim * f),
                (f"k-means scores of one chunk ({c.chunk_size:,} x {c.k:,})",
                 c.chunk_size * c.k * f),
                ("k-means centroids + sums", 2 * c.k * c.pca_dim * f)]
    return out


def feature_dim(config) -> int:
    from dcjax.models import from_config

    return from_config(config, 2).feature_dim


def network_shapes(config):
    import jax

    from dcjax import methods
    from dcjax.sharding import default_mesh

    mesh = default_mesh()
    return jax.eval_shape(lambda: methods.get(config.method).initial_network(config, mesh)[1:])


def activation_bytes(config, per_device: int) -> int:
    """XLA's temporary bytes of one device's forward + backward (every view, every head)."""
    import jax
    import jax.numpy as jnp
    import optax

    from dcjax import methods
    from dcjax.data.pipeline import view_configs
    from dcjax.sharding import default_mesh

    model, params, stats = methods.get(config.method).initial_network(config, default_mesh())
    views = tuple(jax.ShapeDtypeStruct((per_device, v.image_size, v.image_size, 3), jnp.float32)
                  for v in view_configs(config))
    labels = jnp.zeros((per_device * len(views),), jnp.int32)

    def loss(p, batch):
        variables = {"params": p, "batch_stats": stats}
        if config.method == "deepcluster_v2":
            (_, scores), _ = model.apply(variables, batch, True, method=type(model).views,
                                         mutable=["batch_stats"])
        else:
            out, _ = model.apply(variables, batch[0], train=True, mutable=["batch_stats"],
                                 rngs={"dropout": jax.random.key(0)})
            scores = (out,)
        return sum(optax.softmax_cross_entropy_with_integer_labels(
            s, labels[: s.shape[0]]).mean() for s in scores)

    compiled = jax.jit(jax.grad(loss)).lower(params, views).compile()
    analysis = compiled.memory_analysis()
    return int(getattr(analysis, "temp_size_in_bytes", 0))


def main(argv):
    del argv
    import jax

    config = FLAGS.config
    devices = FLAGS.devices or max(1, config.batch_size // 64)
    params = network_shapes(config)[0]
    params_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    count = sum(x.size for x in jax.tree.leaves(params))
    per_device = config.batch_size // devices
    print(f"{config.method} on {config.model.name} ({count:,} parameters), {FLAGS.images:,} "
          f"images, batch {config.batch_size} over {devices} devices ({per_device} each), "
          f"dtype {config.model.dtype}")
    print("| item, per device | bytes | GiB |\n|---|---|---|")
    rows = sizes(config, FLAGS.images, devices, params_bytes)
    if FLAGS.activations:
        rows.append((f"activations of the forward + backward pass, batch {per_device} (XLA temp, "
                     f"{jax.devices()[0].platform})", activation_bytes(config, per_device)))
    for name, b in rows:
        print(f"| {name} | {b:,} | {b / GIB:.3f} |")
    total = sum(b for name, b in rows if "host" not in name)
    print(f"| total on a device (host rows excluded) | {total:,} | {total / GIB:.3f} |")


if __name__ == "__main__":
    app.run(main)
