"""Evaluators: one interface for every evaluation protocol (docs/design.md section 3).

Each protocol is a class built from its own config entry,

    config.evals.<name> = dict(type="knn" | "linear" | "clustering" | "comparison",
                               every_epochs=N, features="network" | "pixels", **settings)

where `settings` are the protocol's own knobs (`SETTINGS`: e.g. a kNN's `k` and `weights`, a linear
probe's `epochs`, `lr`, `views`, or `protocol='reference'`); a setting an entry leaves out takes the
shared default in `config.eval`. So two kNN evaluators with different k coexist:

    c.evals.knn20 = dict(type="knn", k=20)
    c.evals.knn200 = dict(type="knn", k=200, weights="uniform")

`run(representation, splits, mesh, on_batch)` returns the protocol's full result (what `python -m
dcjax.evaluate` writes to RUN/eval/<name>.json) and `values(result)` its named scalars, which the
runner logs as `<name>_<value>` in metrics.jsonl every `every_epochs` epochs (0: every
`config.eval_every_epochs`; both 0: only on demand). A representation (evaluate/representations.py)
is a network's embedding or the raw pixels; `features='pixels'` makes an evaluator measure the
pixels whatever it is handed. The evaluators never import the runner or a method.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from dcjax.config_lib import ConfigError, apply_eval_protocol
from dcjax.evaluate.common import Splits
from dcjax.evaluate.linear import linear_probe, pixel_probe
from dcjax.evaluate.protocols import clustering_protocol, final_comparison, knn_protocol
from dcjax.evaluate.representations import Pixels, Representation
from dcjax.evaluate.settings import check_config as check_eval_config
from dcjax.runs import load_network

FEATURES = ("network", "pixels")
Poll = Callable[[int, int], None]
# Settings every protocol takes: entry key -> the config.eval field it overrides.
COMMON_SETTINGS = {"batch_size": "batch_size"}


class Evaluator:
    """A protocol bound to its settings; `features='pixels'` evaluates raw pixels instead of the
    representation it is handed."""

    type = ""
    SETTINGS: dict[str, str] = {}

    def __init__(self, config: ml_collections.ConfigDict, every_epochs: int = 0,
                 features: str = "network", name: str = "", **settings: Any):
        self.name = name or self.type
        where = f"config.evals.{name}" if name else f"evaluator {self.type!r}"
        if features not in FEATURES:
            raise ConfigError(f"{where}: features={features!r} must be one of {FEATURES}")
        if not isinstance(every_epochs, int) or every_epochs < 0:
            raise ConfigError(f"{where}: every_epochs={every_epochs!r} must be an integer >= 0")
        known = {**COMMON_SETTINGS, **self.SETTINGS}
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise ConfigError(f"{where}: {', '.join(unknown)} is not a setting of a {self.type!r} "
                              f"evaluator (its settings: every_epochs, features, "
                              f"{', '.join(sorted(known))})")
        self.every_epochs, self.features = every_epochs, features
        self.config = self._own_config(config, {known[key]: v for key, v in settings.items()},
                                       where)

    @staticmethod
    def _own_config(config: ml_collections.ConfigDict, overrides: dict[str, Any],
                    where: str) -> ml_collections.ConfigDict:
        """`config` with this evaluator's config.eval fields: the shared ones, its entry's on top
        (under protocol='reference', the reference's values for the fields the entry leaves out)."""
        if not overrides:
            return config
        own = copy.deepcopy(config)
        with own.unlocked():
            for field, value in overrides.items():
                own.eval[field] = tuple(value) if isinstance(value, list) else value
            if "protocol" in overrides:
                apply_eval_protocol(own, {f"eval.{f}" for f in overrides})
        try:
            check_eval_config(own, 1)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        return own

    def period(self) -> int:
        """Epochs between two runs during training (0: never)."""
        return self.every_epochs or int(self.config.get("eval_every_epochs", 0))

    def representation(self, given: Representation | None) -> Representation:
        """What this evaluator measures: the pixels, or the representation it is handed."""
        if self.features == "pixels":
            return Pixels()
        if given is None:
            raise ConfigError(f"evaluator {self.name!r} needs a network (or features='pixels')")
        return given

    def run(self, representation: Representation | None, splits: Splits, mesh: Mesh,
            on_batch: Poll | None = None) -> dict:
        raise NotImplementedError

    def values(self, result: dict) -> dict[str, float]:
        raise NotImplementedError


class LinearEvaluator(Evaluator):
    """Linear probes on every conv layer (evaluate/linear.py); values `<layer>_top1`."""

    type = "linear"
    SETTINGS = {"epochs": "linear_epochs", "lr": "linear_lr", "schedule": "linear_schedule",
                "momentum": "linear_momentum", "weight_decay": "linear_weight_decay",
                "normalize": "linear_normalize", "crop_scale": "crop_scale",
                "views": "linear_views", "test_views": "linear_test_views",
                "test_every": "linear_test_every", "probe_dim": "probe_dim",
                "pixel_pca_dim": "pixel_pca_dim", "protocol": "protocol"}

    def run(self, representation, splits, mesh, on_batch=None) -> dict:
        representation = self.representation(representation)
        if representation.network is None:  # probes on the raw pixels (PCA first)
            return pixel_probe(self.config, splits, mesh)
        return linear_probe(self.config, representation.network, splits, mesh, on_batch=on_batch)

    def values(self, result: dict) -> dict[str, float]:
        return {f"{layer}_top1": r["top1"] for layer, r in result["layers"].items()}


class KnnEvaluator(Evaluator):
    """Weighted kNN on the embedding (AlexNet: fc7) and on it PCA-whitened (evaluate/protocols.py);
    values `top1`, `top1_pca_whitened`. Settings: k, weights, batch_size."""

    type = "knn"
    SETTINGS = {"k": "knn_k", "weights": "knn_weights"}

    def run(self, representation, splits, mesh, on_batch=None) -> dict:
        return knn_protocol(self.config, self.representation(representation), splits, mesh,
                            on_batch=on_batch)

    def values(self, result: dict) -> dict[str, float]:
        raw = [v for k, v in result["features"].items() if not k.endswith("_pca_whitened")]
        white = [v for k, v in result["features"].items() if k.endswith("_pca_whitened")]
        return {"top1": raw[0], "top1_pca_whitened": white[0]}


class ClusteringEvaluator(Evaluator):
    """k-means with k = the number of classes on the held-out split (evaluate/protocols.py);
    values `nmi`, `ari`, `accuracy`."""

    type = "clustering"

    def run(self, representation, splits, mesh, on_batch=None) -> dict:
        return clustering_protocol(self.config, self.representation(representation), splits, mesh,
                                   on_batch=on_batch)

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

    def run(self, representation, splits, mesh, on_batch=None) -> dict:
        c, net = self.config, self.representation(representation).network
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
    """The evaluator of type `kind` on `config` (options: every_epochs, features, name and the
    type's SETTINGS)."""
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
        out[name] = build(kind, config, name=name, **options)
    return out
