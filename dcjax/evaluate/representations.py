"""What an evaluator measures: a representation maps a split's images to feature rows.

`NetworkEmbedding` is a network's embedding (the vector its method clusters: AlexNet's fc7) of the
deterministic view, extracted sharded over the devices; `Pixels` is the raw pixels of the same view,
flattened in [0, 1] on the host. The protocols (kNN, clustering) read either through the same
`rows()` call, so raw pixels are one more representation, not a branch in each protocol.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from dcjax.runs import Network


@dataclasses.dataclass
class HostRows:
    """Feature rows already on the host, one per image in dataset order (no padding); the same
    interface as dcjax.features.Features."""

    rows: np.ndarray  # [N, D]
    labels: np.ndarray  # [N]
    valid: None = None
    image: None = None

    @property
    def row_labels(self) -> np.ndarray:
        return self.labels

    def to_numpy(self) -> np.ndarray:
        return self.rows


class Representation:
    name = ""
    network: Network | None = None  # the network behind it, for protocols that need layers

    def rows(self, config: ml_collections.ConfigDict, source: Any, mesh: Mesh, desc: str,
             on_batch: Callable[[int, int], None] | None = None, cached: tuple | None = None):
        """Features of every image of `source` (dcjax.features.Features or HostRows)."""
        raise NotImplementedError


class NetworkEmbedding(Representation):
    """The embedding of `net` (its model's 'embedding' output), by `feature_fn` when given (the
    trainer's jitted one), in batches of config.eval.batch_size or of `cached`'s batch."""

    def __init__(self, net: Network, feature_fn: Callable | None = None):
        from dcjax.step import make_feature_fn

        self.network = net
        self.name = net.model.embedding_name
        self.feature_fn = feature_fn or jax.jit(make_feature_fn(net.model))

    def rows(self, config, source, mesh, desc, on_batch=None, cached=None):
        from dcjax.evaluate.protocols import embedding_features

        return embedding_features(config, self.feature_fn, self.network.variables, source, mesh,
                                  desc, on_batch=on_batch, cached=cached)


class Pixels(Representation):
    """The centre view's raw pixels (evaluate.linear.pixel_arrays), read on this process."""

    name = "pixels"

    def rows(self, config, source, mesh, desc, on_batch=None, cached=None):
        from dcjax.evaluate.linear import pixel_arrays

        x, y = pixel_arrays(config, source)
        return HostRows(x, y)
