"""DeepCluster training: `train_and_evaluate(config, workdir)`.

Every epoch (docs/design.md section 1): extract_features (eval mode, deterministic view) -> pca_whiten
(PCA + whitening + L2) -> kmeans -> NMI against the previous assignment and the true labels ->
uniform_label_sampler -> reset_head -> train_epoch on augmented views. Re-clustering happens every
`config.reassign` epochs; the head is reset only then (cluster ids change meaning only then).

Parallelism: one jitted step over a 1-D device mesh ('data'), batch sharded, state replicated.
Features stay on the devices that computed them, in a device-major buffer (each device keeps its
rows of every batch), and PCA and k-means run sharded on it; only int32 assignments reach the host.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from dcjax import faults, interop, metrics, sharding
from dcjax.checkpoint import Checkpointer, abstract_like
from dcjax.clustering import choose_backend, sample_epoch
from dcjax.config_lib import (
    ConfigError,
    few_images_per_cluster,
    resolve_auto,
    resume_changes,
    validate,
    validate_against_data,
)
from dcjax.data import pipeline
from dcjax.data.datasets import DataError, DatasetInfo, open_split
from dcjax.data.prepare import ensure_embedded
from dcjax.evaluate import evaluators
from dcjax.evaluate.common import Network, Splits
from dcjax.export import read_ids, write_export
from dcjax.features import progress, write_rows_fn
from dcjax.models import from_config
from dcjax.plots import (
    nearest_to_centroids,
    pick_clusters,
    plot_cluster_grid,
    plot_filters,
    write_epoch_plots,
)
from dcjax.pseudolabels import Clustering, cluster_network, clustering_seed
from dcjax.sharding import AXIS, default_mesh
from dcjax.step import TrainState, create_train_state, make_feature_fn, make_train_step, reset_head
from dcjax.stopping import Diverged, Interrupted, StopSignal
from dcjax.view_cache import ViewCache, files_fingerprint
from dcjax.workdir import WorkdirError, WorkdirLock, check_workdir, create_workdir
from dcjax.writers import MetricWriter

# ======================================================================== set-up


@dataclasses.dataclass
class Run:
    """What the loop needs, built once."""

    config: ml_collections.ConfigDict
    workdir: Path
    mesh: Mesh
    source: Any
    info: DatasetInfo
    model: Any
    train_step: Any
    feature_fn: Any
    write_rows: Any
    eval_source: Any = None  # the held-out split, when evaluators run during training
    evaluators: dict = dataclasses.field(default_factory=dict)  # name -> periodic Evaluator
    view_cache: ViewCache | None = None  # the train split's deterministic view, decoded once
    eval_view_cache: ViewCache | None = None  # the same for the held-out split (evaluations)
    stop: StopSignal = dataclasses.field(default_factory=StopSignal)
    k_from_images: bool = False  # clustering.k was 0: derived from the number of images

    @property
    def rows(self) -> NamedSharding:
        return sharding.rows(self.mesh)

    @property
    def replicated(self) -> NamedSharding:
        return sharding.replicated(self.mesh)

    @property
    def num_images(self) -> int:
        return len(self.source)

    @functools.cached_property
    def train_key(self) -> jax.Array:
        """key(seed), replicated on the mesh (the train step folds in the step number)."""
        return jax.jit(lambda: jax.random.key(self.config.seed), out_shardings=self.replicated)()

    @functools.cached_property
    def _reset_head(self):
        # Built once per run (a jit made at each call would compile at every epoch).
        c = self.config
        return jax.jit(
            lambda s, e: reset_head(s, c, jax.random.fold_in(jax.random.key(c.seed), e)),
            out_shardings=self.replicated, donate_argnums=0)

    def reset_head(self, state: TrainState, epoch: int) -> TrainState:
        """A new head for `epoch` (its key: fold_in(key(seed), epoch)), computed on the mesh."""
        return self._reset_head(state, np.int32(epoch))

    def global_array(self, local: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(self.rows, local)

    def loader_options(self) -> dict:
        return pipeline.loader_options(self.config)


@dataclasses.dataclass
class LoopState:
    """The loop's bookkeeping besides the train state, saved with every checkpoint.

    `epoch` is the epoch in progress and `step_in_epoch` the batches of it done; `assignment` [N]
    int32 the pseudo-labels it trains on and `indices` [M] the images it samples (None until the
    epoch has sampled them); `partial` its clustering record and running sums; `history` the records
    of the finished epochs. Checkpoints hold it as an `arrays` item and a JSON `meta` item.
    """

    epoch: int = 0
    step_in_epoch: int = 0
    assignment: np.ndarray | None = None
    indices: np.ndarray | None = None
    partial: dict = dataclasses.field(default_factory=dict)
    history: list[dict] = dataclasses.field(default_factory=list)

    def to_checkpoint(self, epoch_done: bool, num_images: int,
                      config: ml_collections.ConfigDict) -> tuple[dict, dict]:
        """(arrays, meta) for Checkpointer.save; an epoch_done checkpoint keeps no epoch state."""
        meta = {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "epoch_done": epoch_done,
                "partial": {} if epoch_done else {k: v if not isinstance(v, jax.Array) else float(v)
                                                  for k, v in self.partial.items()},
                "num_images": num_images, "history": self.history,
                "config": json.loads(config.to_json_best_effort())}
        indices = None if epoch_done else self.indices
        arrays = {"assignment": self.assignment.astype(np.int32),
                  # Orbax stores no empty array: a -1 placeholder between epochs.
                  "indices": (np.full(1, -1) if indices is None else indices).astype(np.int32)}
        return arrays, meta

    @classmethod
    def from_checkpoint(cls, arrays: dict, meta: dict) -> LoopState:
        """The state to go on from: the next epoch after an epoch_done checkpoint, else the same
        epoch at the saved batch."""
        if meta["epoch_done"]:
            return cls(epoch=meta["epoch"] + 1, assignment=arrays["assignment"],
                       history=meta["history"])
        return cls(epoch=meta["epoch"], step_in_epoch=meta["step_in_epoch"],
                   assignment=arrays["assignment"], indices=arrays["indices"],
                   partial=meta["partial"], history=meta["history"])


# ======================================================================== the method's steps


def _extract_poll(run: Run):
    every = run.config.log_every_steps

    def on_batch(done: int, total: int) -> None:
        faults.point("extract_batch")
        run.stop.check("feature extraction", done, total, every)

    return on_batch


def _kmeans_poll(run: Run):
    def on_iteration(done: int, total: int) -> None:
        faults.point("kmeans_iteration")
        run.stop.check("k-means", done, total)

    return on_iteration


def _after_pca(run: Run):
    def after() -> None:
        faults.point("pca")
        run.stop.check("PCA", 1, 1)

    return after


def extract_and_cluster(run: Run, state: TrainState, epoch: int, *, nearest: bool = False,
                        keep_features: bool = False) -> Clustering:
    """extract_features (eval mode, deterministic view) -> pca_whiten -> kmeans of the network as
    `epoch` begins (dcjax.pseudolabels), stoppable by a signal in every phase."""
    result = cluster_network(run.config, run.feature_fn, (state.params, state.batch_stats),
                             run.source, run.mesh, clustering_seed(run.config, epoch),
                             write_rows=run.write_rows, on_batch=_extract_poll(run),
                             after_pca=_after_pca(run), on_iteration=_kmeans_poll(run),
                             nearest=nearest, keep_features=keep_features,
                             verbose=jax.process_index() == 0, cache=run.view_cache)
    print_cache_log(run)
    return result


def print_cache_log(run: Run) -> None:
    """Prints (process 0) what the view caches decided since the last call."""
    for label, cache in (("view cache:", run.view_cache),
                         ("view cache (held-out split):", run.eval_view_cache)):
        for line in cache.take_log() if cache is not None else ():
            if jax.process_index() == 0:
                print(line.replace("view cache:", label, 1))


def cluster(run: Run, state: TrainState, epoch: int, previous: np.ndarray | None, *,
            keep_features: bool = False) -> tuple[Clustering, dict]:
    """The pseudo-labels of `epoch` and the epoch record's clustering fields (NMI against the
    previous assignment and against the labels, cluster sizes, times)."""
    result = extract_and_cluster(run, state, epoch, nearest=visualize(run.config, epoch) or keep_features,
                                 keep_features=keep_features)
    assignment = result.assignment
    record = {
        "kmeans_objective": result.objective,
        "kmeans_splits": result.num_splits,
        "kmeans_rescored": result.rescored_share,
        "nmi_prev": metrics.nmi(previous, assignment) if previous is not None else None,
        **label_metrics(result.labels, assignment, run.info),
        **metrics.cluster_size_stats(assignment, run.config.clustering.k),
        **result.seconds,
    }
    return result, record


def visualize(config: ml_collections.ConfigDict, epoch: int) -> bool:
    """Whether the image plots (cluster grid, conv1 filters) are drawn for `epoch`: every
    `visualize_every_epochs` epochs and for the final network (epoch == num_epochs)."""
    every = config.get("visualize_every_epochs", 10)
    return epoch == config.num_epochs or (every > 0 and epoch % every == 0)


def write_cluster_grid(run: Run, assignment: np.ndarray, distance: np.ndarray, epoch: int,
                       clusters: int = 10, per_cluster: int = 8) -> None:
    """plots/clusters.png: for random clusters, the images nearest their centroid (paper Fig. 4)."""
    chosen = pick_clusters(assignment, clusters, run.config.seed + epoch)
    view = pipeline.view_config(run.config)
    rows = [np.stack([pipeline.center_view(pipeline.decode_image(run.source[int(i)]["image"]), view)
                      for i in members])
            for members in nearest_to_centroids(assignment, distance, chosen, per_cluster)]
    sizes = np.bincount(assignment, minlength=run.config.clustering.k)[chosen]
    out = run.workdir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    plot_cluster_grid(rows, chosen, sizes, out / "clusters.png",
                      f"images nearest the centroid of {len(chosen)} random clusters (id, size), "
                      f"clustering of epoch {epoch}")


def label_metrics(labels: np.ndarray, assignment: np.ndarray, info: DatasetInfo) -> dict:
    """Agreement with the true labels (never used for training); None without labels."""
    if info.num_classes < 2 or labels.min() < 0:
        return {"nmi_labels": None, "ari_labels": None, "acc_labels": None}
    return {"nmi_labels": metrics.nmi(labels, assignment),
            "ari_labels": metrics.ari(labels, assignment),
            "acc_labels": metrics.clustering_accuracy(labels, assignment)}


def train_epoch(run: Run, state: TrainState, loop: LoopState, writer: MetricWriter,
                after_batch: Callable[[TrainState, int, int, int], None]) -> TrainState:
    """One epoch of SGD on the pseudo-labels `loop.assignment` of the images `loop.indices`, from
    batch `loop.step_in_epoch`; `loop.partial` keeps the epoch's running loss, accuracy and time.

    `after_batch(state, done, steps, global_step)` runs after every batch but the last: the loop's
    checkpoint and stop decisions. A non-finite loss raises Diverged.
    """
    c, epoch, p = run.config, loop.epoch, loop.partial
    steps = len(loop.indices) // c.batch_size
    make = pipeline.train_batches
    if c.data.loader == "dali":
        from dcjax.data import dali_loader

        make = functools.partial(dali_loader.train_batches, mesh=run.mesh)
    batches = make(run.source, loop.indices, pipeline.view_config(c), c.batch_size,
                   seed=_mix(c.seed, epoch), start_batch=loop.step_in_epoch,
                   decoder=c.data.decoder, **run.loader_options())
    key = run.train_key
    p["loss_sum"], p["acc_sum"] = float(p.get("loss_sum", 0.0)), float(p.get("acc_sum", 0.0))
    time_before, t0 = p.get("time_train", 0.0), time.time()
    global_step = int(state.step)
    for s, batch in enumerate(progress(batches, total=steps - loop.step_in_epoch,
                                       desc=f"training epoch {epoch} ({epoch + 1} of "
                                            f"{c.num_epochs})", images_per_step=c.batch_size),
                              start=loop.step_in_epoch):
        faults.point("train_batch")
        images = batch["image"]  # numpy rows of this process, or (DALI on GPUs) a global array
        if not isinstance(images, jax.Array):
            images = run.global_array(images)
        labels = run.global_array(loop.assignment[batch["index"]].astype(np.int32))
        state, m = run.train_step(state, images, labels, key)
        # Device scalars: summing them does not wait for the step.
        p["loss_sum"], p["acc_sum"] = p["loss_sum"] + m["loss"], p["acc_sum"] + m["accuracy"]
        done, global_step = s + 1, global_step + 1
        if done % c.log_every_steps == 0 or done == steps:
            loss = float(m["loss"])
            if not math.isfinite(loss):
                raise Diverged(f"loss is {loss} at epoch {epoch}, batch {done}")
            writer.write_scalars(global_step, {"train/loss": loss})
        p["time_train"] = time_before + time.time() - t0
        loop.step_in_epoch = done
        if done < steps:
            after_batch(state, done, steps, global_step)
    p["loss_sum"], p["acc_sum"], p["steps"] = float(p["loss_sum"]), float(p["acc_sum"]), steps
    p["time_train"] = time_before + time.time() - t0
    check_finite(state, p["loss_sum"], epoch, steps)
    return state


@jax.jit
def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def check_finite(state: TrainState, loss_sum, epoch: int, done: int) -> None:
    """Raises Diverged unless the epoch's running loss and every parameter are finite."""
    loss = float(loss_sum)
    if not math.isfinite(loss):
        raise Diverged(f"loss became {loss} at epoch {epoch} by batch {done}")
    if not bool(_all_finite(state.params)):
        raise Diverged(f"parameters became non-finite at epoch {epoch} by batch {done}")


def _mix(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


# ======================================================================== the loop


def setup(config: ml_collections.ConfigDict, workdir: str) -> Run:
    """Validates the config against the devices and the data and builds the run; writes nothing."""
    validate(config, num_devices=jax.device_count())
    ensure_embedded(config.data.name, config.data.data_dir or None)
    source, info = open_split(config.data.name, config.data.train_split,
                              config.data.data_dir or None)
    k_from_images = config.clustering.k == 0
    for note in resolve_auto(config, info.split_sizes):
        if jax.process_index() == 0:
            print(note)
    validate_against_data(config, info.split_sizes)
    warning = few_images_per_cluster(config, info.split_sizes[config.data.train_split])
    if warning and jax.process_index() == 0:
        print(warning)
    if jax.process_index() == 0 and info.num_classes < 2:
        print(f"dataset {config.data.name!r} has no labels: the label metrics (nmi_labels, ...) are "
              f"null; nmi_prev measures how stable the clusters are")
    mesh = default_mesh()
    if jax.process_index() == 0 and config.clustering.backend == "auto":
        choice, reason = choose_backend(info.split_sizes[config.data.train_split],
                                        config.clustering.pca_dim, mesh=mesh,
                                        across_processes=jax.process_count() > 1)
        print(f"k-means: {choice} ({reason}; config.clustering.backend='auto')")
    model = from_config(config, config.clustering.k)
    # Every sampler draws len(source) images an epoch (dcjax/clustering/sampler.py).
    steps_per_epoch = max(1, len(source) // config.batch_size)
    train_step = jax.jit(make_train_step(model, config, steps_per_epoch), donate_argnums=0)
    feature_fn = jax.jit(make_feature_fn(model, "fc7"))
    eval_source = None
    periodic = {name: e for name, e in evaluators.from_config(config).items() if e.period()}
    if periodic:
        if not config.data.eval_split or info.num_classes < 2:
            raise ConfigError(f"evaluating during training ({', '.join(periodic)} every "
                              f"{[e.period() for e in periodic.values()]} epochs) needs a labelled "
                              f"config.data.eval_split of {config.data.name!r}")
        eval_source, _ = open_split(config.data.name, config.data.eval_split,
                                    config.data.data_dir or None)
    d = config.data
    folder = Path(d.view_cache_dir or Path(workdir) / "view_cache")

    def split_cache(split: str, directory: Path) -> ViewCache:
        return ViewCache(d.view_cache, directory=directory, share=d.view_cache_share,
                         dataset={"name": d.name, "split": split,
                                  "files": files_fingerprint(info.split_files.get(split, ()))})

    view_cache = split_cache(d.train_split, folder)
    eval_view_cache = (split_cache(d.eval_split, folder / "eval")
                       if d.eval_split and d.eval_split in info.split_sizes else None)
    return Run(config=config, workdir=Path(workdir), mesh=mesh, source=source, info=info,
               model=model, train_step=train_step, feature_fn=feature_fn,
               write_rows=write_rows_fn(mesh), eval_source=eval_source, evaluators=periodic,
               view_cache=view_cache, eval_view_cache=eval_view_cache,
               k_from_images=k_from_images)


def drawn_state(run: Run) -> TrainState:
    """The train state drawn from key(config.seed), replicated on the mesh."""
    c = run.config
    return jax.jit(lambda: create_train_state(run.model, c, jax.random.key(c.seed)),
                   out_shardings=run.replicated)()


def initial_state(run: Run) -> TrainState:
    """The initial train state (key(config.seed)), created directly replicated on the mesh; with
    config.model.init, the converted network of that folder in place of the drawn weights."""
    c = run.config
    state = drawn_state(run)
    if c.model.init:  # a converted network (dcjax.convert) in place of the random body
        params, stats = interop.load_into(c.model.init, state.params, state.batch_stats)
        state = state.replace(params=jax.device_put(params, run.replicated),
                              batch_stats=jax.device_put(stats, run.replicated))
    return state


def saved_config(workdir: Path) -> dict | None:
    """The config a workdir's checkpoints were written with (config.json, else the newest
    checkpoint's metadata), or None when the workdir has no checkpoint."""
    ckpt_dir = workdir / "checkpoints"
    steps = sorted((int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()),
                   reverse=True) if ckpt_dir.is_dir() else []
    if not steps:
        return None
    for path in [workdir / "config.json"] + [ckpt_dir / str(s) / "meta" / "metadata" for s in steps]:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        return record.get("config", record) if path.name == "metadata" else record
    raise WorkdirError(f"--workdir={workdir} has checkpoints but no readable config.json: cannot "
                       f"tell which config wrote them; use a new --workdir")


def check_resume(run: Run) -> list[tuple]:
    """Stops (ConfigError) when the workdir's checkpoints were written with other values of fields
    that give saved state its meaning (config_lib.FROZEN); returns the changes that are allowed."""
    saved = saved_config(run.workdir)
    if saved is None:
        return []
    frozen, allowed = resume_changes(saved, run.config)
    if frozen:
        def say(field, old, new):
            if field == "clustering.k" and run.k_from_images:
                return (f"clustering.k: one cluster per 100 images (config.clustering.k=0), {old!r} "
                        f"in the run, {new!r} now for {run.num_images:,} images")
            return f"{field}: {old!r} in the run, {new!r} now"

        listed = "; ".join(say(*change) for change in frozen)
        grown = any(field == "clustering.k" for field, _, _ in frozen) and run.k_from_images
        raise ConfigError(f"--workdir={run.workdir} holds a run with another config ({listed}); "
                          f"these cannot change on a resumed run: use a new --workdir"
                          + (f" (new images get this run's clusters without training: python -m "
                             f"dcjax.predict --workdir={run.workdir} --source=FOLDER "
                             f"--out=FILE.csv)" if grown else ""))
    return allowed


def take_lock(run: Run) -> WorkdirLock | None:
    """Process 0 creates the workdir and locks it; every process learns whether that worked."""
    lock, problem = None, ""
    if jax.process_index() == 0:
        try:
            create_workdir(run.workdir)
            lock = WorkdirLock(run.workdir).acquire()
        except WorkdirError as e:
            problem = str(e)
    if jax.process_count() > 1:
        failed = int(multihost_utils.broadcast_one_to_all(np.int32(bool(problem))))
        if failed and not problem:
            problem = f"process 0 could not take --workdir={run.workdir} (see its error)"
    if problem:
        raise WorkdirError(problem)
    return lock


def describe_checkpoint(meta: dict | None, step: int | None) -> str:
    if meta is None:
        return "no checkpoint was written yet"
    where = (f"end of epoch {meta['epoch']}" if meta["epoch_done"] else
             f"epoch {meta['epoch']}, batch {meta['step_in_epoch']}")
    return f"the last checkpoint ({where}, step {step}) is kept"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs DeepCluster as `config` says, writing to `workdir`; resumes from its checkpoints.

    Before anything is written the config, the data and the workdir are checked, and a workdir
    with checkpoints must hold a run of the same config (docs/reliability.md). Returns the final
    epoch's record (plus the raw-pixel baseline when configured).
    """
    path = check_workdir(workdir)
    run = setup(config, str(path))
    changes = check_resume(run)
    lock = take_lock(run)
    try:
        with run.stop:
            return _train(run, changes)
    finally:
        if lock is not None:
            lock.release()


def _train(run: Run, changes: list[tuple]) -> dict:
    c, lead = run.config, jax.process_index() == 0
    state = initial_state(run)
    ckpt = Checkpointer(run.workdir / "checkpoints", keep=c.keep_checkpoints)
    loop = LoopState()
    try:
        restored = ckpt.restore_latest(abstract_like(state))
    except Exception:
        ckpt.close()
        raise
    kept = describe_checkpoint(None, None)
    if restored is not None:
        step, state, arrays, meta = restored
        before = int(meta.get("num_images", arrays["assignment"].shape[0]))
        if before != run.num_images:
            ckpt.close()
            raise DataError(f"dataset {c.data.name!r} split {c.data.train_split!r} has "
                            f"{run.num_images} images now but had {before} when the checkpoints in "
                            f"{ckpt.directory} were written; restore that dataset or use a new "
                            f"--workdir")
        loop = LoopState.from_checkpoint(arrays, meta)
        kept = describe_checkpoint(meta, step)
        done = finished_run(run, loop, step) if not changes else None
        if done is not None:
            ckpt.close()
            if lead:
                print(f"the run is complete ({c.num_epochs} epoch{'s' if c.num_epochs > 1 else ''}, "
                      f"step {step}): nothing to do; "
                      f"its results are in {run.workdir / 'summary.json'} and "
                      f"{run.workdir / 'export'} (raise --config.num_epochs to train on)")
            return done
        print(f"resuming from epoch {loop.epoch}, batch {loop.step_in_epoch} ({ckpt.directory})")
    if lead:
        (run.workdir / "config.json").write_text(c.to_json_best_effort(indent=1))
        if changes:
            print("resuming with changed settings: " + ", ".join(
                f"{field} {old!r} -> {new!r}" for field, old, new in changes))
            with open(run.workdir / "config_changes.jsonl", "a") as f:
                f.write(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "epoch": loop.epoch,
                                    "changes": [list(x) for x in changes]}) + "\n")
    writer = MetricWriter(run.workdir, enabled=lead)
    writer.reset(loop.history)

    def save(state: TrainState, epoch_done: bool) -> None:
        """A checkpoint of `state` and `loop`, never of a diverged state."""
        nonlocal kept
        check_finite(state, loop.partial.get("loss_sum", 0.0) if not epoch_done else 0.0,
                     loop.epoch, loop.step_in_epoch)
        arrays, meta = loop.to_checkpoint(epoch_done, run.num_images, c)
        faults.point("checkpoint_save")
        ckpt.save(int(state.step), state, arrays, meta)
        kept = describe_checkpoint(meta, int(state.step))

    def after_batch(state: TrainState, done: int, steps: int, global_step: int) -> None:
        # Checkpoint timing: on a signal (all processes agree on the batch), and every
        # checkpoint_every_steps global steps. At the epoch's last batch the loop's end-of-epoch
        # checkpoint comes first.
        if run.stop.agreed(done, steps, c.log_every_steps):
            save(state, False)
            raise Interrupted(run.stop.signum, f"training (epoch {loop.epoch}, batch {done})")
        if c.checkpoint_every_steps and global_step % c.checkpoint_every_steps == 0:
            save(state, False)

    try:
        for epoch in range(loop.epoch, c.num_epochs):
            loop.epoch = epoch
            if loop.indices is None:  # a fresh epoch: (re-)cluster, sample, reset the head
                loop.partial, loop.step_in_epoch = {"epoch": epoch}, 0
                if loop.assignment is None or epoch % c.reassign == 0:
                    clustering, record = cluster(run, state, epoch, loop.assignment)
                    loop.assignment = clustering.assignment
                    loop.partial.update(record)
                    if lead and clustering.distance is not None:
                        write_cluster_grid(run, loop.assignment, clustering.distance, epoch)
                    del clustering
                    state = run.reset_head(state, epoch)
                rng = np.random.default_rng([c.seed, epoch])
                loop.indices = sample_epoch(c.clustering.sampler, loop.assignment, run.num_images,
                                            rng)
            state = train_epoch(run, state, loop, writer, after_batch)
            record = epoch_record(loop.partial, c.batch_size)
            record.update(periodic_evaluation(run, state, epoch))
            loop.history.append(record)
            save(state, True)
            loop.indices = None
            writer.write_epoch(record)
            if lead:
                write_epoch_plots(run.workdir, loop.history, loop.assignment, c.clustering.k)
                if visualize(c, epoch + 1):
                    plot_filters(jax.device_get(state.params["conv1"]["kernel"]),
                                 run.workdir / "plots" / "conv1_filters.png",
                                 f"conv1 filters after epoch {epoch}")
                print(format_record(record) + time_left(loop.history, c.num_epochs))
            if run.stop.agreed(1, 1):  # a signal during the epoch's last batch or its evaluation
                raise Interrupted(run.stop.signum, f"the end of epoch {epoch}")
        final = finish(run, state, loop.history, loop.assignment)
    except Interrupted as e:
        raise e.with_kept(kept) from None
    except Diverged as e:
        raise Diverged(f"{e}: the run diverged; {kept}; rerun with a lower config.optim.lr in a "
                       f"new --workdir") from None
    finally:
        writer.close()
        ckpt.close()
    return final


def finished_run(run: Run, loop: LoopState, step: int) -> dict | None:
    """The summary of a run that trained all its epochs and finished them (summary.json and the
    export of this checkpoint written), else None: rerunning it with the same config has nothing
    to do (with changed resumable settings its end-of-run steps run again)."""
    if loop.epoch < run.config.num_epochs:
        return None
    from dcjax.export import load_clustering

    try:
        summary = json.loads((run.workdir / "summary.json").read_text())
        exported = load_clustering(run.workdir / "export" / "clustering.npz")
    except (OSError, ValueError):  # DataError is a ValueError
        return None
    return summary if exported["checkpoint_step"] == step else None


def finish(run: Run, state: TrainState, history: list[dict], assignment: np.ndarray) -> dict:
    """The clustering of the trained network (written per image to RUN/export), the comparison with
    the random initialisation and the raw pixels (`compare`), summary.json."""
    c, lead = run.config, jax.process_index() == 0
    final = dict(history[-1]) if history else {}
    if history:
        # The epoch records cluster the network as each epoch began; this clusters the trained one
        # as training does (k = config.clustering.k, PCA-whitened) and writes it per image.
        clustering, after = cluster(run, state, c.num_epochs, assignment, keep_features=True)
        final.update({f"final_clusters_{key}": after[key] for key in
                      ("nmi_labels", "ari_labels", "acc_labels", "kmeans_objective")})
        if lead:
            write_cluster_grid(run, clustering.assignment, clustering.distance, c.num_epochs)
        folder = write_export(run.workdir / "export", clustering,
                              read_ids(run.source) if lead else None, run.info.class_names, c,
                              int(state.step), c.num_epochs)
        del clustering
        if lead:
            print(f"per-image clusters and features written to {folder}")
        final.update(compare(run, state))
    if lead:
        (run.workdir / "summary.json").write_text(json.dumps(final, indent=1))
    return final


def compare(run: Run, state: TrainState) -> dict:
    """The end-of-run comparison (evaluate.protocols.final_comparison) on the held-out split when
    there is a labelled one, else on the training split when it is labelled: summary.json's
    final_nmi_labels (the trained network), random_init_nmi_labels (the same architecture at its
    random initialisation, config.seed) and, with config.pixel_baseline, pixel_kmeans_nmi_labels;
    the first two also on ReLU(fc7) (`*_after_relu`); {'final_nmi_labels': None} without labels."""
    from dcjax.evaluate.protocols import final_comparison

    c, d, lead = run.config, run.config.data, jax.process_index() == 0
    if run.info.num_classes < 2:
        return {"final_nmi_labels": None}
    # Extracted in batches of config.eval.batch_size, as `python -m dcjax.evaluate
    # --protocol=comparison` does (the row layout, hence k-means' initial rows, follows the batch):
    # the training split reads the loop's cache only when the two batches agree.
    source, split, cached = run.source, d.train_split, (
        run.view_cache if c.eval.batch_size == c.batch_size else None, c.eval.batch_size)
    if d.eval_split and d.eval_split in run.info.split_sizes:
        source = run.eval_source or open_split(d.name, d.eval_split, d.data_dir or None)[0]
        split, cached = d.eval_split, (run.eval_view_cache, c.eval.batch_size)
    drawn = drawn_state(run)
    networks = {"deepcluster": Network(run.model, state.params, state.batch_stats, None),
                "random_init": Network(run.model, drawn.params, drawn.batch_stats, None)}
    every = c.log_every_steps
    result = final_comparison(
        c, networks, source, split, run.info.num_classes, run.mesh,
        pixels=bool(c.get("pixel_baseline", False)) and lead,
        pixel_mesh=Mesh(np.array(jax.local_devices()), (AXIS,)),
        on_batch=lambda done, total: run.stop.check("the final comparison", done, total, every),
        on_pixel_iteration=lambda done, total: run.stop.check_local("the pixel baseline"),
        cached=cached if cached[0] is not None else None)
    print_cache_log(run)
    if result is None:  # the split's images are not all labelled
        return {"final_nmi_labels": None}
    out = {"comparison": result, "final_nmi_labels": result["deepcluster"]["nmi"],
           "random_init_nmi_labels": result["random_init"]["nmi"],
           "final_nmi_labels_after_relu": result["deepcluster"]["after_relu"]["nmi"],
           "random_init_nmi_labels_after_relu": result["random_init"]["after_relu"]["nmi"]}
    if "pixels" in result:
        out["pixel_kmeans_nmi_labels"] = result["pixels"]["nmi"]
    if lead:
        rows = [("DeepCluster", "deepcluster"), ("random init", "random_init"), ("raw pixels", "pixels")]
        print(f"final nmi_labels (k-means, k={result['k']} = the classes, the {result['images']} "
              f"images of split {split!r}, mean of {result['restarts']} initialisations; fc7 "
              f"L2-normalised): " + ", ".join(
                  f"{label} {result[key]['nmi']:.4f} (sd {result[key]['nmi_std']:.4f})"
                  for label, key in rows if key in result))
        print("  the same on ReLU(fc7), what the classifier reads: " + ", ".join(
            f"{label} {result[key]['after_relu']['nmi']:.4f}" for label, key in rows[:2]))
    return out


def periodic_evaluation(run: Run, state: TrainState, epoch: int) -> dict:
    """The evaluators due after `epoch` (config.evals, every `period()` epochs) on the held-out
    split: `<name>_<value>` and `time_<name>` for the epoch record."""
    out: dict = {}
    due = {name: e for name, e in run.evaluators.items() if (epoch + 1) % e.period() == 0}
    if not due:
        return out
    net = Network(run.model, state.params, state.batch_stats, None)
    # The bank reads the training loop's cached view (same view, the loop's batch); the held-out
    # split has its own cache.
    caches = {"train": (run.view_cache, run.config.batch_size),
              "test": (run.eval_view_cache, run.config.eval.batch_size)}
    splits = Splits(run.source, run.eval_source, run.info,
                    {k: v for k, v in caches.items() if v[0] is not None})
    every = run.config.log_every_steps
    for name, evaluator in due.items():
        t0 = time.time()
        poll = lambda done, total, name=name: run.stop.check(f"the {name} evaluation", done, total,
                                                             every)
        result = evaluator.run(net, splits, run.mesh, on_batch=poll, feature_fn=run.feature_fn)
        out.update({f"{name}_{key}": value for key, value in evaluator.values(result).items()})
        out[f"time_{name}"] = time.time() - t0
    print_cache_log(run)
    return out


def epoch_record(partial: dict, batch_size: int) -> dict:
    steps = max(partial.get("steps", 0), 1)
    keys = ("kmeans_objective", "kmeans_splits", "kmeans_rescored", "nmi_prev", "nmi_labels", "ari_labels",
            "acc_labels", "nonempty_clusters", "largest_cluster_frac", "size_entropy_normalized",
            "time_extract", "time_pca", "time_kmeans")
    record = {"epoch": partial["epoch"], "loss": partial["loss_sum"] / steps,
              "accuracy": partial["acc_sum"] / steps}
    record.update({k: partial.get(k) for k in keys})
    record["time_train"] = partial.get("time_train", 0.0)
    record["train_images_per_sec"] = steps * batch_size / max(record["time_train"], 1e-9)
    return record


def time_left(history: list[dict], num_epochs: int) -> str:
    """' | N epochs left, about H:MM:SS' from the median time of the last (up to 5) epochs, the
    first epoch (compilation) left out when others exist; '' after the last epoch."""
    left = num_epochs - len(history)
    if left <= 0 or not history:
        return ""
    recent = [sum(v for k, v in r.items() if k.startswith("time_") and isinstance(v, float))
              for r in (history[1:] if len(history) > 1 else history)[-5:]]
    seconds = int(round(sorted(recent)[len(recent) // 2] * left))
    return (f" | {left} epoch{'s' if left > 1 else ''} left, about "
            f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}")


def format_record(r: dict) -> str:
    def f(key, fmt=".4f"):
        v = r.get(key)
        return "-" if v is None else format(v, fmt)

    return (f"epoch {r['epoch']}: loss {f('loss')} nmi_labels {f('nmi_labels')} "
            f"nmi_prev {f('nmi_prev')} nonempty {f('nonempty_clusters', 'd')} "
            f"| extract {f('time_extract', '.1f')}s pca {f('time_pca', '.1f')}s "
            f"kmeans {f('time_kmeans', '.1f')}s"
            + (f" ({r['kmeans_rescored']:.1%} re-scored)" if r.get("kmeans_rescored") else "")
            + f" train {f('time_train', '.1f')}s"
            + (f" | knn_top1 {f('knn_top1')}" if r.get("knn_top1") is not None else ""))
