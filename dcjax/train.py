"""DeepCluster training: `train_and_evaluate(config, workdir)`.

This module will hold the epoch loop of DESIGN.md section 1 (extract -> PCA-whiten -> k-means ->
sample -> reset head -> train). What exists so far is its set-up: validation, the device mesh, the
data views and the model, checked end to end on one batch.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dcjax.config_lib import validate, validate_against_data
from dcjax.data import pipeline
from dcjax.data.datasets import open_split
from dcjax.models import create_model


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis 'data'."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    m = config.model
    return create_model(m.name, num_classes, image_size=config.data.image_size, sobel=m.sobel,
                        fc_dim=m.fc_dim, widths=tuple(m.widths) or None, dropout=m.dropout,
                        dtype=jnp.dtype(m.dtype))


def view_config(config: ml_collections.ConfigDict) -> pipeline.ViewConfig:
    return pipeline.ViewConfig(image_size=config.data.image_size,
                               resize_size=config.data.resize_size)


def init_variables(model, rng: jax.Array, image_size: int) -> dict:
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return model.init({"params": rng, "dropout": rng}, dummy, train=False)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs DeepCluster as `config` says, writing to `workdir`; returns a summary dict."""
    validate(config, num_devices=jax.device_count())
    source, info = open_split(config.data.name, config.data.train_split,
                              config.data.data_dir or None)
    validate_against_data(config, info.split_sizes)
    workdir_path = Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        (workdir_path / "config.json").write_text(config.to_json_best_effort(indent=1))

    mesh = make_mesh()
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    model = build_model(config, config.clustering.k)
    variables = init_variables(model, jax.random.key(config.seed), config.data.image_size)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))

    view = view_config(config)
    t0 = time.time()
    batch = next(pipeline.ordered_batches(source, view, config.batch_size,
                                          process_index=jax.process_index(),
                                          process_count=jax.process_count(),
                                          num_threads=config.data.num_threads))
    images = jax.make_array_from_process_local_data(batch_sharding, batch["image"])
    features = jax.jit(lambda v, x: model.apply(v, pipeline.normalize(x), output="fc7"))(
        variables, images)
    train_batch = next(pipeline.train_batches(source, np.arange(config.batch_size), view,
                                              config.batch_size, seed=config.seed,
                                              process_index=jax.process_index(),
                                              process_count=jax.process_count(),
                                              num_threads=config.data.num_threads))
    summary = {
        "dataset": info.name,
        "train_images": info.split_sizes[config.data.train_split],
        "classes": info.num_classes,
        "model": config.model.name,
        "params": num_params,
        "devices": jax.device_count(),
        "fc7_shape": list(features.shape),
        "train_batch_shape": list(train_batch["image"].shape),
        "seconds": round(time.time() - t0, 2),
    }
    print(json.dumps(summary))
    print("Set-up checked (data, views, model, one sharded forward pass). The DeepCluster epoch "
          "loop is not built yet: no training was run.")
    return summary
