"""Evaluators: one interface for every evaluation protocol (docs/design.md section 3).

Each protocol is a class built from a config entry,

    config.evals.<name> = dict(type="knn" | "linear" | "clustering" | "comparison",
                               every_epochs=N, features="network" | "pixels")

`run(net, splits, mesh, on_batch)` returns the protocol's full result (what `python -m
dcjax.evaluate` writes to RUN/eval/<name>.json) and `values(result)` its named scalars, which the
trainer logs as `<name>_<value>` in metrics.jsonl every `every_epochs` epochs (0: every
`config.eval_every_epochs`; both 0: only on demand). The evaluators never import the trainer: they
are handed a `Network` (model and variables) and the splits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from dcjax.config_lib import ConfigError
from dcjax.evaluate.common import Network, Splits, load_network
from dcjax.evaluate.linear import linear_probe, pixel_probe
from dcjax.evaluate.protocols import clustering_protocol, final_comparison, knn_protocol

FEATURES = ("network", "pixels")
Poll = Callable[[int, int], None]


class Evaluator:
    """A protocol bound to a config; `features='pixels'` evaluates raw pixels instead of a network."""

    type = ""

    def __init__(self, config: ml_collections.ConfigDict, every_epochs: int = 0,
                 features: str = "network"):
        if features not in FEATURES:
            raise ConfigError(f"evaluator {self.type!r}: features={features!r} must be one of "
                              f"{FEATURES}")
        if not isinstance(every_epochs, int) or every_epochs < 0:
            raise ConfigError(f"evaluator {self.type!r}: every_epochs={every_epochs!r} must be an "
                              f"integer >= 0")
        self.config, self.every_epochs, self.features = config, every_epochs, features

    def period(self) -> int:
        """Epochs between two runs during training (0: never)."""
        return self.every_epochs or int(self.config.get("eval_every_epochs", 0))

    def run(self, net: Network | None, splits: Splits, mesh: Mesh, on_batch: Poll | None = None,
            feature_fn: Callable | None = None) -> dict:
        raise NotImplementedError

    def values(self, result: dict) -> dict[str, float]:
        raise NotImplementedError

    def _network(self, net: Network | None) -> Network | None:
        if self.features == "pixels":
            return None
        if net is None:
            raise ConfigError(f"evaluator {self.type!r} needs a network (or features='pixels')")
        return net


class LinearEvaluator(Evaluator):
    """Linear probes on every conv layer (evaluate/linear.py); values `<layer>_top1`."""

    type = "linear"

    def run(self, net, splits, mesh, on_batch=None, feature_fn=None) -> dict:
        net = self._network(net)
        if net is None:
            return pixel_probe(self.config, splits, mesh)
        return linear_probe(self.config, net, splits, mesh, on_batch=on_batch)

    def values(self, result: dict) -> dict[str, float]:
        return {f"{layer}_top1": r["top1"] for layer, r in result["layers"].items()}


class KnnEvaluator(Evaluator):
    """Weighted kNN on fc7 and PCA-whitened fc7 (evaluate/protocols.py); values `top1`,
    `top1_pca_whitened`."""

    type = "knn"

    def run(self, net, splits, mesh, on_batch=None, feature_fn=None) -> dict:
        return knn_protocol(self.config, self._network(net), splits, mesh, feature_fn=feature_fn,
                            on_batch=on_batch)

    def values(self, result: dict) -> dict[str, float]:
        raw = [v for k, v in result["features"].items() if not k.endswith("_pca_whitened")]
        white = [v for k, v in result["features"].items() if k.endswith("_pca_whitened")]
        return {"top1": raw[0], "top1_pca_whitened": white[0]}


class ClusteringEvaluator(Evaluator):
    """k-means with k = the number of classes on the held-out split (evaluate/protocols.py);
    values `nmi`, `ari`, `accuracy`."""

    type = "clustering"

    def run(self, net, splits, mesh, on_batch=None, feature_fn=None) -> dict:
        return clustering_protocol(self.config, self._network(net), splits, mesh,
                                   feature_fn=feature_fn, on_batch=on_batch)

    def values(self, result: dict) -> dict[str, float]:
        return {key: result[key] for key in ("nmi", "ari", "accuracy")}


class ComparisonEvaluator(Evaluator):
    """The end-of-run comparison (protocols.final_comparison) on the held-out split (on the
    training split for `python -m dcjax.evaluate` on a dataset without one): k-means with
    k = the number of classes, mean of 10 initialisations, on the network's fc7 (L2-normalised),
    on the same architecture at its random initialisation (config.seed) and on the raw pixels;
    values `nmi`, `random_init_nmi`, `pixels_nmi` (and the networks' on ReLU(fc7):
    `nmi_after_relu`, `random_init_nmi_after_relu`). The two baselines do not change with the
    network, so an evaluator computes them once and reuses them (during training, every period)."""

    type = "comparison"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._baselines: dict | None = None

    def run(self, net, splits, mesh, on_batch=None, feature_fn=None) -> dict:
        c, net = self.config, self._network(net)
        split = splits.test_split or c.data.eval_split
        common = dict(source=splits.test, split=split,
                      num_classes=splits.info.num_classes, mesh=mesh, on_batch=on_batch,
                      cached=splits.caches.get("test"))
        if self._baselines is None:
            networks = {}
            if net is not None:  # the run's own initialisation, as `--init=random` loads it
                networks["random_init"] = load_network(c, "", "random", mesh=mesh)
            local = Mesh(np.array(jax.local_devices()), mesh.axis_names)
            base = final_comparison(c, networks, pixels=jax.process_index() == 0, pixel_mesh=local,
                                    **common)
            if base is None:
                raise ConfigError(f"the comparison needs every image of split {split!r} labelled")
            self._baselines = {k: base[k] for k in ("random_init", "pixels") if k in base}
        result = final_comparison(c, {"deepcluster": net} if net is not None else {},
                                  pixels=False, **common)
        if result is None:
            raise ConfigError(f"the comparison needs every image of split {split!r} labelled")
        return {**result, **self._baselines}

    def values(self, result: dict) -> dict[str, float]:
        out = {f"{name}_nmi": result[name]["nmi"] for name in ("random_init", "pixels")
               if name in result}
        if "random_init" in result:
            out["random_init_nmi_after_relu"] = result["random_init"]["after_relu"]["nmi"]
        if "deepcluster" in result:
            out["nmi"] = result["deepcluster"]["nmi"]
            out["nmi_after_relu"] = result["deepcluster"]["after_relu"]["nmi"]
        return out


TYPES: dict[str, type[Evaluator]] = {
    cls.type: cls for cls in (LinearEvaluator, KnnEvaluator, ClusteringEvaluator,
                              ComparisonEvaluator)}


def build(kind: str, config: ml_collections.ConfigDict, **options: Any) -> Evaluator:
    """The evaluator of type `kind` on `config` (options: every_epochs, features)."""
    if kind not in TYPES:
        raise ConfigError(f"evaluator type {kind!r} must be one of {tuple(TYPES)}")
    return TYPES[kind](config, **options)


def from_config(config: ml_collections.ConfigDict) -> dict[str, Evaluator]:
    """{name: evaluator} of `config.evals`."""
    out = {}
    for name, entry in (config.get("evals") or {}).items():
        options = dict(entry)
        kind = options.pop("type", None)
        if kind is None:
            raise ConfigError(f"config.evals.{name} has no type (one of {tuple(TYPES)})")
        try:
            out[name] = build(kind, config, **options)
        except TypeError as e:
            raise ConfigError(f"config.evals.{name}: {e}") from e
    return out
