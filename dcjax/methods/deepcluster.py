"""DeepCluster (Caron et al., ECCV 2018) as a method of the runner: `config.method = 'deepcluster'`.

Every epoch (docs/design.md section 1): extract_features (eval mode, deterministic view) -> pca_whiten
(PCA + whitening + L2) -> kmeans -> NMI against the previous assignment and the true labels ->
uniform_label_sampler -> reset_head -> train on augmented views. Re-clustering happens every
`config.reassign` epochs; the head is reset only then (cluster ids change meaning only then).

Features stay on the devices that computed them, in a device-major buffer (each device keeps its
rows of every batch), and PCA and k-means run sharded on it; only int32 assignments reach the host.
The method state is the pseudo-labels of every image and the images the epoch samples.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from dcjax import faults, methods, metrics
from dcjax.clustering import choose_backend, sample_epoch
from dcjax.config_lib import ConfigError, few_images_per_cluster
from dcjax.data import pipeline
from dcjax.data.datasets import DatasetInfo, open_split
from dcjax.export import read_ids, write_export
from dcjax.features import write_rows_fn
from dcjax.methods.base import Method, field
from dcjax.models import from_config
from dcjax.plots import (
    nearest_to_centroids,
    pick_clusters,
    plot_cluster_grid,
    plot_filters,
    write_epoch_plots,
)
from dcjax.pseudolabels import Clustering, cluster_network, clustering_seed
from dcjax.runs import Network
from dcjax.sharding import AXIS, replicated
from dcjax.step import TrainState, create_train_state, make_feature_fn, make_train_step, reset_head


@dataclasses.dataclass
class DeepClusterState:
    """`assignment` [N] int32: the pseudo-label of every image (None before the first clustering);
    `indices` [M]: the images the epoch in progress trains on, in order (None between epochs)."""

    assignment: np.ndarray | None = None
    indices: np.ndarray | None = None


@dataclasses.dataclass
class ClusteringRecord:
    """The epoch record's fields of an epoch that re-clustered (None in the others)."""

    kmeans_objective: float | None = None
    kmeans_splits: int | None = None
    kmeans_rescored: float | None = None
    nmi_prev: float | None = None  # NMI with the previous epoch's assignment
    nmi_labels: float | None = None  # against the true labels (never used for training)
    ari_labels: float | None = None
    acc_labels: float | None = None
    nonempty_clusters: int | None = None
    largest_cluster_frac: float | None = None
    size_entropy_normalized: float | None = None
    # Label-free (dcjax.quality): NMI with k-means on the raw pixels (same k, same images) and the
    # median cluster cohesion of the clustered features.
    pixel_agreement: float | None = None
    cohesion_median: float | None = None
    time_extract: float | None = None
    time_pca: float | None = None
    time_kmeans: float | None = None


RECORD_KEYS = tuple(f.name for f in dataclasses.fields(ClusteringRecord))


def label_metrics(labels: np.ndarray, assignment: np.ndarray, info: DatasetInfo) -> dict:
    """Agreement with the true labels (never used for training); None without labels."""
    if info.num_classes < 2 or labels.min() < 0:
        return {"nmi_labels": None, "ari_labels": None, "acc_labels": None}
    return {"nmi_labels": metrics.nmi(labels, assignment),
            "ari_labels": metrics.ari(labels, assignment),
            "acc_labels": metrics.clustering_accuracy(labels, assignment)}


def visualize(config: ml_collections.ConfigDict, epoch: int) -> bool:
    """Whether the image plots (cluster grid, conv1 filters) are drawn for `epoch`: every
    `visualize_every_epochs` epochs and for the final network (epoch == num_epochs)."""
    every = config.get("visualize_every_epochs", 10)
    return epoch == config.num_epochs or (every > 0 and epoch % every == 0)


def _mix(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


@methods.register("deepcluster")
class DeepCluster(Method):
    metrics = ("loss", "accuracy")
    record_keys = RECORD_KEYS

    def __init__(self, run: Any):
        super().__init__(run)
        self._pixels: dict | None = None  # dcjax.quality.pixel_clustering, once a process run
        c, info = run.config, run.info
        num_images = info.split_sizes[c.data.train_split]
        warning = few_images_per_cluster(c, num_images)
        if warning:
            run.print(warning)
        if info.num_classes < 2:
            run.print(f"dataset {c.data.name!r} has no labels: the label metrics (nmi_labels, ...) "
                      f"are null; nmi_prev measures how stable the clusters are")
        if run.lead and c.clustering.backend == "auto":
            choice, reason = choose_backend(num_images, c.clustering.pca_dim, mesh=run.mesh,
                                            across_processes=jax.process_count() > 1)
            print(f"k-means: {choice} ({reason}; config.clustering.backend='auto')")
        if len(pipeline.view_configs(c)) > 1:
            raise ConfigError(f"config.data.views={tuple(c.data.views)}: DeepCluster trains on one "
                              f"view per image (image_size, crop_scale); leave config.data.views "
                              f"empty")
        self.model = from_config(c, c.clustering.k)
        if c.clustering.pca_dim > self.model.feature_dim:
            raise ConfigError(f"config.clustering.pca_dim={c.clustering.pca_dim} exceeds the width "
                              f"of the clustered features ({self.model.feature_dim}, "
                              f"{c.model.name}'s {self.model.embedding_name})")
        # Every sampler draws len(source) images an epoch (dcjax/clustering/sampler.py).
        steps_per_epoch = max(1, len(run.source) // c.batch_size)
        self._train_step = jax.jit(make_train_step(self.model, c, steps_per_epoch),
                                   donate_argnums=0)
        self._feature_fn = jax.jit(make_feature_fn(self.model))
        self.write_rows = write_rows_fn(run.mesh)

    # --------------------------------------------------------------------- state
    def random_state(self) -> TrainState:
        """The train state drawn from key(config.seed), replicated on the mesh."""
        c = self.run.config
        return jax.jit(lambda: create_train_state(self.model, c, jax.random.key(c.seed)),
                       out_shardings=self.run.replicated)()

    @classmethod
    def initial_network(cls, config, mesh):
        model = from_config(config, config.clustering.k)
        state = jax.jit(lambda: create_train_state(model, config, jax.random.key(config.seed)),
                        out_shardings=replicated(mesh))()
        return model, state.params, state.batch_stats

    def init_state(self) -> TrainState:
        """The drawn state; with config.model.init, the converted network of that folder in place
        of the drawn weights."""
        c = self.run.config
        state = self.random_state()
        if c.model.init:  # a converted network (dcjax.convert) in place of the random body
            params, stats = self.run.init_weights(state.params, state.batch_stats)
            state = state.replace(params=jax.device_put(params, self.run.replicated),
                                  batch_stats=jax.device_put(stats, self.run.replicated))
        return state

    def new_method_state(self) -> DeepClusterState:
        return DeepClusterState()

    def state_to_checkpoint(self, mstate: DeepClusterState, epoch_done: bool) -> dict:
        indices = None if epoch_done else mstate.indices
        return {"assignment": mstate.assignment.astype(np.int32),
                # Orbax stores no empty array: a -1 placeholder between epochs.
                "indices": (np.full(1, -1) if indices is None else indices).astype(np.int32)}

    def state_from_checkpoint(self, arrays: dict, epoch_done: bool) -> DeepClusterState:
        return DeepClusterState(assignment=arrays["assignment"],
                                indices=None if epoch_done else arrays["indices"])

    # --------------------------------------------------------------------- an epoch
    @functools.cached_property
    def _reset_head(self):
        # Built once per run (a jit made at each call would compile at every epoch).
        c = self.run.config
        return jax.jit(
            lambda s, e: reset_head(s, c, jax.random.fold_in(jax.random.key(c.seed), e)),
            out_shardings=self.run.replicated, donate_argnums=0)

    def reset_head(self, state: TrainState, epoch: int) -> TrainState:
        """A new head for `epoch` (its key: fold_in(key(seed), epoch)), computed on the mesh."""
        return self._reset_head(state, np.int32(epoch))

    def begin_epoch(self, state: TrainState, mstate: DeepClusterState,
                    epoch: int) -> tuple[TrainState, DeepClusterState, dict]:
        """Re-clusters (every config.reassign epochs, and when there is no assignment yet), resets
        the head, samples the epoch's images."""
        c, run = self.run.config, self.run
        fields = {}
        if mstate.assignment is None or epoch % c.reassign == 0:
            clustering, record = self.cluster(state, epoch, mstate.assignment)
            mstate = dataclasses.replace(mstate, assignment=clustering.assignment)
            fields = dataclasses.asdict(record)
            if run.lead and clustering.distance is not None:
                self.write_cluster_grid(mstate.assignment, clustering.distance, epoch)
            del clustering
            state = self.reset_head(state, epoch)
        rng = np.random.default_rng([c.seed, epoch])
        indices = sample_epoch(c.clustering.sampler, mstate.assignment, run.num_images, rng)
        return state, dataclasses.replace(mstate, indices=indices), fields

    def batches(self, mstate: DeepClusterState, epoch: int, start_batch: int):
        c, run = self.run.config, self.run
        make = pipeline.train_batches
        if c.data.loader == "dali":
            from dcjax.data import dali_loader

            make = functools.partial(dali_loader.train_batches, mesh=run.mesh)
        batches = make(run.source, mstate.indices, pipeline.view_config(c), c.batch_size,
                       seed=_mix(c.seed, epoch), start_batch=start_batch,
                       decoder=c.data.decoder, **run.loader_options())
        return batches, len(mstate.indices) // c.batch_size

    def train_step(self, state: TrainState, batch: dict, mstate: DeepClusterState):
        images = batch["image"]  # numpy rows of this process, or (DALI on GPUs) a global array
        if not isinstance(images, jax.Array):
            images = self.run.global_array(images)
        labels = self.run.global_array(mstate.assignment[batch["index"]].astype(np.int32))
        return self._train_step(state, images, labels, self.run.train_key)

    def end_epoch(self, state: TrainState, mstate: DeepClusterState, epoch: int,
                  history: list[dict]) -> DeepClusterState:
        c, run = self.run.config, self.run
        if run.lead:
            write_epoch_plots(run.workdir, history, mstate.assignment, c.clustering.k)
            if visualize(c, epoch + 1):
                plot_filters(jax.device_get(self.model.first_filters(state.params)),
                             run.workdir / "plots" / "conv1_filters.png",
                             f"first-layer filters after epoch {epoch}")
        return dataclasses.replace(mstate, indices=None)

    def format_record(self, r: dict) -> str:
        def f(key, spec=".4f"):
            return field(r, key, spec)

        return (f"epoch {r['epoch']}: loss {f('loss')} nmi_labels {f('nmi_labels')} "
                f"nmi_prev {f('nmi_prev')} nonempty {f('nonempty_clusters', 'd')} "
                + (f"pixel_agreement {f('pixel_agreement', '.3f')} "
                   if r.get("pixel_agreement") is not None else "")
                + (f"cohesion {f('cohesion_median', '.3f')} "
                   if r.get("cohesion_median") is not None else "")
                + f"| extract {f('time_extract', '.1f')}s pca {f('time_pca', '.1f')}s "
                f"kmeans {f('time_kmeans', '.1f')}s"
                + (f" ({r['kmeans_rescored']:.1%} re-scored)" if r.get("kmeans_rescored") else "")
                + f" train {f('time_train', '.1f')}s"
                + (f" | knn_top1 {f('knn_top1')}" if r.get("knn_top1") is not None else ""))

    # --------------------------------------------------------------------- clustering
    def _polls(self):
        run, every = self.run, self.run.config.log_every_steps

        def on_batch(done: int, total: int) -> None:
            faults.point("extract_batch")
            run.stop.check("feature extraction", done, total, every)

        def after_pca() -> None:
            faults.point("pca")
            run.stop.check("PCA", 1, 1)

        def on_iteration(done: int, total: int) -> None:
            faults.point("kmeans_iteration")
            run.stop.check("k-means", done, total)

        return {"on_batch": on_batch, "after_pca": after_pca, "on_iteration": on_iteration}

    def extract_and_cluster(self, state: TrainState, epoch: int, *, nearest: bool = False,
                            keep_features: bool = False) -> Clustering:
        """extract_features (eval mode, deterministic view) -> pca_whiten -> kmeans of the network
        as `epoch` begins (dcjax.pseudolabels), stoppable by a signal in every phase."""
        run = self.run
        result = cluster_network(run.config, self._feature_fn, (state.params, state.batch_stats),
                                 run.source, run.mesh, clustering_seed(run.config, epoch),
                                 write_rows=self.write_rows, nearest=nearest,
                                 keep_features=keep_features, verbose=run.lead,
                                 cache=run.view_cache, **self._polls())
        run.print_cache_log()
        return result

    def cluster(self, state: TrainState, epoch: int, previous: np.ndarray | None, *,
                keep_features: bool = False) -> tuple[Clustering, ClusteringRecord]:
        """The pseudo-labels of `epoch` and the epoch record's clustering fields (NMI against the
        previous assignment and against the labels, cluster sizes, times)."""
        c = self.run.config
        result = self.extract_and_cluster(state, epoch, keep_features=keep_features,
                                          nearest=visualize(c, epoch) or keep_features)
        assignment = result.assignment
        sizes = metrics.cluster_size_stats(assignment, c.clustering.k)
        record = ClusteringRecord(
            kmeans_objective=result.objective,
            kmeans_splits=result.num_splits,
            kmeans_rescored=result.rescored_share,
            nmi_prev=metrics.nmi(previous, assignment) if previous is not None else None,
            **label_metrics(result.labels, assignment, self.run.info),
            **{key: value for key, value in sizes.items() if key in RECORD_KEYS},
            pixel_agreement=self.pixel_agreement(assignment),
            cohesion_median=result.cohesion_median,
            **result.seconds,
        )
        return result, record

    def pixel_agreement(self, assignment: np.ndarray) -> float | None:
        """dcjax.quality.agreement of `assignment` with the pixel clustering (computed once a
        process run, on the lead process)."""
        from dcjax import quality

        c, run = self.run.config, self.run
        if not run.lead:
            return None
        if self._pixels is None:
            self._pixels = quality.pixel_clustering(c, run.source, c.clustering.k, c.seed)
        return quality.agreement(self._pixels, assignment)

    def write_cluster_grid(self, assignment: np.ndarray, distance: np.ndarray, epoch: int,
                           clusters: int = 10, per_cluster: int = 8) -> None:
        """plots/clusters.png: for random clusters, the images nearest their centroid (paper
        Fig. 4)."""
        run = self.run
        chosen = pick_clusters(assignment, clusters, run.config.seed + epoch)
        view = pipeline.view_config(run.config)
        rows = [np.stack([pipeline.center_view(pipeline.decode_image(run.source[int(i)]["image"]),
                                               view) for i in members])
                for members in nearest_to_centroids(assignment, distance, chosen, per_cluster)]
        sizes = np.bincount(assignment, minlength=run.config.clustering.k)[chosen]
        out = run.workdir / "plots"
        out.mkdir(parents=True, exist_ok=True)
        plot_cluster_grid(rows, chosen, sizes, out / "clusters.png",
                          f"images nearest the centroid of {len(chosen)} random clusters (id, "
                          f"size), clustering of epoch {epoch}")

    # --------------------------------------------------------------------- evaluation, the end
    def network(self, state: TrainState) -> Network:
        return Network(self.model, state.params, state.batch_stats, None)

    def feature_fn(self):
        return self._feature_fn

    def finished(self, step: int) -> bool:
        """Whether RUN/export holds the clustering of checkpoint `step`."""
        from dcjax.export import load_clustering

        try:
            exported = load_clustering(self.run.workdir / "export" / "clustering.npz")
        except (OSError, ValueError):  # DataError is a ValueError
            return False
        return exported["checkpoint_step"] == step

    def finish(self, state: TrainState, mstate: DeepClusterState, history: list[dict]) -> dict:
        """The clustering of the trained network (written per image to RUN/export) and the
        comparison with the random initialisation and the raw pixels (`compare`)."""
        c, run = self.run.config, self.run
        # The epoch records cluster the network as each epoch began; this clusters the trained one
        # as training does (k = config.clustering.k, PCA-whitened) and writes it per image.
        clustering, after = self.cluster(state, c.num_epochs, mstate.assignment,
                                         keep_features=True)
        after = dataclasses.asdict(after)
        out = {f"final_clusters_{key}": after[key] for key in
               ("nmi_labels", "ari_labels", "acc_labels", "kmeans_objective")}
        if run.lead:
            self.write_cluster_grid(clustering.assignment, clustering.distance, c.num_epochs)
        folder = write_export(run.workdir / "export", clustering,
                              read_ids(run.source) if run.lead else None, run.info.class_names, c,
                              int(state.step), c.num_epochs)
        nearest, k = clustering.nearest, clustering.k
        del clustering
        run.print(f"per-image clusters and features written to {folder}")
        if run.lead:
            out.update(self.label_free_signals(folder, nearest, k, history))
        out.update(self.compare(state))
        return out

    def label_free_signals(self, folder, nearest: np.ndarray, k: int, history: list[dict]) -> dict:
        """dcjax.quality's signals of the exported clustering, printed and for summary.json."""
        from dcjax import quality
        from dcjax.export import cohesion_by_cluster

        c, run = self.run.config, self.run
        signals = {**quality.pixel_agreement(c, run.source, np.asarray(nearest), k, c.seed,
                                             self._pixels),
                   **quality.trend(history)}
        cohesion = cohesion_by_cluster(folder, k)
        finite = cohesion[np.isfinite(cohesion)]
        signals["cohesion_median"] = float(np.median(finite)) if len(finite) else None
        for line in quality.lines(signals, c.num_epochs, cohesion):
            run.print(line)
        return signals

    def compare(self, state: TrainState) -> dict:
        """The end-of-run comparison with the random initialisation and the raw pixels
        (`compare_with_baselines`)."""
        drawn = self.random_state()
        return compare_with_baselines(self.run, self.model, self.network(state),
                                      Network(self.model, drawn.params, drawn.batch_stats, None))


def compare_with_baselines(run: Any, model: Any, trained: Network, random_init: Network) -> dict:
    """The end-of-run comparison (evaluate.protocols.final_comparison) on the held-out split when
    there is a labelled one, else on the training split when it is labelled: summary.json's
    final_nmi_labels (the trained network), random_init_nmi_labels (the same architecture at its
    random initialisation, config.seed) and, with config.pixel_baseline, pixel_kmeans_nmi_labels;
    the first two also after a ReLU (`*_after_relu`); {'final_nmi_labels': None} without labels.
    For any method whose network keeps the model contract (its 'embedding' is what is scored)."""
    from dcjax.evaluate.protocols import final_comparison

    c, d = run.config, run.config.data
    if run.info.num_classes < 2:
        return {"final_nmi_labels": None}
    # Extracted in batches of config.eval.batch_size, as `python -m dcjax.evaluate
    # --protocol=comparison` does (the row layout, hence k-means' initial rows, follows the
    # batch): the training split reads the loop's cache only when the two batches agree.
    source, split, cached = run.source, d.train_split, (
        run.view_cache if c.eval.batch_size == c.batch_size else None, c.eval.batch_size)
    if d.eval_split and d.eval_split in run.info.split_sizes:
        source = run.eval_source or open_split(d.name, d.eval_split, d.data_dir or None)[0]
        split, cached = d.eval_split, (run.eval_view_cache, c.eval.batch_size)
    networks = {"deepcluster": trained, "random_init": random_init}
    every = c.log_every_steps
    result = final_comparison(
        c, networks, source, split, run.info.num_classes, run.mesh,
        pixels=bool(c.get("pixel_baseline", False)) and run.lead,
        pixel_mesh=Mesh(np.array(jax.local_devices()), (AXIS,)),
        on_batch=lambda done, total: run.stop.check("the final comparison", done, total, every),
        on_pixel_iteration=lambda done, total: run.stop.check_local("the pixel baseline"),
        cached=cached if cached[0] is not None else None)
    run.print_cache_log()
    if result is None:  # the split's images are not all labelled
        return {"final_nmi_labels": None}
    out = {"comparison": result, "final_nmi_labels": result["deepcluster"]["nmi"],
           "random_init_nmi_labels": result["random_init"]["nmi"],
           "final_nmi_labels_after_relu": result["deepcluster"]["after_relu"]["nmi"],
           "random_init_nmi_labels_after_relu": result["random_init"]["after_relu"]["nmi"]}
    if "pixels" in result:
        out["pixel_kmeans_nmi_labels"] = result["pixels"]["nmi"]
    rows = [("DeepCluster", "deepcluster"), ("random init", "random_init"),
            ("raw pixels", "pixels")]
    run.print(f"final nmi_labels (k-means, k={result['k']} = the classes, the "
              f"{result['images']} images of split {split!r}, mean of {result['restarts']} "
              f"initialisations; {model.embedding_name} L2-normalised): " + ", ".join(
                  f"{label} {result[key]['nmi']:.4f} (sd {result[key]['nmi_std']:.4f})"
                  for label, key in rows if key in result))
    run.print(f"  the same on ReLU({model.embedding_name}), what the classifier reads: "
              + ", ".join(f"{label} {result[key]['after_relu']['nmi']:.4f}"
                          for label, key in rows[:2]))
    return out
