"""DeepCluster-v2 (Caron et al., 2020, released with SwAV) as a method: `config.method =
'deepcluster_v2'`, settings in `config.deepcluster_v2`.

What it does, as facebookresearch/swav's main_deepclusterv2.py (commit 04b8f43; line numbers of
that file):
  * the network: a ResNet trunk, a projection head Linear(C, hidden) -> BatchNorm -> ReLU ->
    Linear(hidden, feat_dim) whose output is L2-normalised, and one bias-free prototype layer per
    head (`prototypes0..N`, src/resnet50.py `forward_head`, `MultiPrototypes`);
  * multi-crop views (`config.data.views`); crops of one size go through the trunk together, all
    of them through the head together (src/resnet50.py `forward`);
  * a memory bank of the normalised embeddings of the crops `crops_for_assign` of every image,
    filled by a pass in training mode before the first epoch (`init_memory`, l. 300-326) and
    overwritten during each epoch with each batch's embeddings (l. 283-287). Here the bank and its
    image index are part of the train state, so checkpoints hold them and a resumed run is exact;
  * at each epoch start, per head h, spherical k-means on bank h mod len(crops_for_assign) (the
    heads alternate between the banks, l. 375): K random rows as initial centroids (l. 337-339),
    `kmeans_iterations` rounds of dot-product assignment and mean update, a cluster that lost all
    its rows keeping its centroid, centroids L2-normalised each round (l. 343-364), a final
    assignment; the head's prototypes are set to the centroids (l. 366); images without a bank row
    get no target (-100 there, -1 here);
  * the loss: for every head, cross-entropy of prototype scores / temperature against the image's
    assignment, for every crop, averaged over heads (l. 259-265); the prototypes' gradients are
    dropped for the first `freeze_prototypes_niters` iterations (l. 270-274): they, their weight
    decay and their momentum stay as they are;
  * LARS (optax.lars, trust coefficient 0.001, momentum 0.9, weight decay on every parameter) on a
    linear warm-up from `start_warmup` to `lr` over `warmup_epochs`, then a cosine to `final_lr`
    (l. 166-171). optax's trust ratio divides by |g + wd p| where apex's LARC divides by
    |g| + wd |p|, and optax scales by the learning rate before the momentum, PyTorch after: both
    differ only while the rate changes, slightly.
The schedule runs over `lr_epochs` (frozen) rather than num_epochs (resumable), so a run raised to
more epochs keeps its schedule. Evaluators read the trunk's pooled features (the model's
'embedding'); the end-of-run comparison is DeepCluster's (random init, pixels).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from dcjax import faults, methods, metrics
from dcjax.config_lib import ConfigError
from dcjax.data import pipeline
from dcjax.data.pipeline import normalize
from dcjax.methods.base import Method, field
from dcjax.methods.deepcluster import compare_with_baselines, label_metrics
from dcjax.models import from_config
from dcjax.runs import Network
from dcjax.sharding import AXIS, replicated


class ProjectionPrototypes(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Linear, L2-normalised, then one bias-free prototype layer per
    head: (z [B, feat_dim], (scores [B, K_h] per head))."""

    hidden_dim: int
    feat_dim: int
    prototypes: tuple[int, ...]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, name="projection_0")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                         dtype=self.dtype, name="projection_bn")(x)
        x = nn.Dense(self.feat_dim, dtype=self.dtype, name="projection_1")(nn.relu(x))
        x = x.astype(jnp.float32)
        z = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        scores = tuple(nn.Dense(k, use_bias=False, name=f"prototypes{i}")(z)
                       for i, k in enumerate(self.prototypes))
        return z, scores


class DeepClusterV2Net(nn.Module):
    """A trunk (any registered architecture) with the projection and prototype head. Keeps the
    model contract of the trunk: 'embedding' and 'layers' are the trunk's; 'projection' is z;
    'logits' the first head's prototype scores."""

    backbone: nn.Module
    head: ProjectionPrototypes

    def __call__(self, x, train: bool = False, output: str = "logits"):
        if output in ("embedding", "layers"):
            return self.backbone(x, train, output)
        z, scores = self.head(self.backbone(x, train, "embedding"), train)
        return z if output == "projection" else scores[0]

    def views(self, views: tuple, train: bool):
        """Multi-crop forward: consecutive crops of one size through the trunk together, all of
        them through the head: (z [V * B, D], scores per head [V * B, K_h]), crop-major."""
        pooled, start = [], 0
        while start < len(views):
            end = start
            while end < len(views) and views[end].shape[1:] == views[start].shape[1:]:
                end += 1
            pooled.append(self.backbone(jnp.concatenate(views[start:end]), train, "embedding"))
            start = end
        return self.head(jnp.concatenate(pooled), train)

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    @property
    def embedding_name(self) -> str:
        return self.backbone.embedding_name

    @property
    def embedding_description(self) -> str:
        return self.backbone.embedding_description

    @property
    def layer_names(self) -> tuple[str, ...]:
        return self.backbone.layer_names

    def layer_pooling(self, image_size: int):
        return self.backbone.layer_pooling(image_size)

    def first_filters(self, params: dict):
        return self.backbone.first_filters(params["backbone"])


@flax.struct.dataclass
class V2State:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    bank: jax.Array  # [len(crops_for_assign), rows, feat_dim]: row r = position r of an epoch
    bank_index: jax.Array  # [rows] int32: the image each bank row holds (-1: none yet)
    bank_label: jax.Array  # [rows] int32: that image's label (-1: unlabelled), for the records


def lr_schedule(c: ml_collections.ConfigDict, steps_per_epoch: int):
    """The reference's schedule as a function of the step: np.linspace(start_warmup, lr, W) over
    the warm-up's W steps, then final + (lr - final) (1 + cos(pi t / T)) / 2 over the other T."""
    v = c.deepcluster_v2
    warm = v.warmup_epochs * steps_per_epoch
    rest = max(1, (v.lr_epochs - v.warmup_epochs) * steps_per_epoch)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        up = v.start_warmup + (v.lr - v.start_warmup) * step / max(warm - 1, 1)
        t = jnp.minimum(step - warm, rest)
        down = v.final_lr + 0.5 * (v.lr - v.final_lr) * (1 + jnp.cos(jnp.pi * t / rest))
        return jnp.where(step < warm, up, down)

    return schedule


def build_model(c: ml_collections.ConfigDict) -> DeepClusterV2Net:
    """The trunk `config.model` describes with the head of `config.deepcluster_v2`."""
    v = c.deepcluster_v2
    return DeepClusterV2Net(from_config(c, 1), ProjectionPrototypes(
        v.hidden_dim, v.feat_dim, tuple(v.prototypes), jnp.dtype(c.model.dtype)))


def initial_variables(model: DeepClusterV2Net, seed: int, size: int) -> dict:
    return model.init({"params": jax.random.key(seed)}, jnp.zeros((1, size, size, 3)),
                      train=False)


def _frozen_path(path) -> bool:
    return any(getattr(k, "key", None) is not None and str(k.key).startswith("prototypes")
               for k in path)


def spherical_kmeans(bank: jax.Array, init: jax.Array, iterations: int,
                     chunk: int = 8192) -> tuple[jax.Array, jax.Array]:
    """(centroids [K, D], assignment [R]) of k-means on L2-normalised rows by dot product, from the
    rows `init` [K] (main_deepclusterv2.py `cluster_memory`)."""
    k = init.shape[0]
    centroids = bank[init]
    rows = bank.shape[0]
    pad = (-rows) % chunk if rows > chunk else 0

    def assign(c):
        x = jnp.pad(bank, ((0, pad), (0, 0))) if pad else bank
        if x.shape[0] <= chunk:
            return jnp.argmax(x @ c.T, axis=1)
        parts = jax.lax.map(lambda xs: jnp.argmax(xs @ c.T, axis=1),
                            x.reshape(-1, chunk, x.shape[1]))
        return parts.reshape(-1)[:rows]

    def step(c, _):
        a = assign(c)
        sums = jax.ops.segment_sum(bank, a, num_segments=k)
        counts = jax.ops.segment_sum(jnp.ones(rows, jnp.float32), a, num_segments=k)
        c = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], c)
        return c / jnp.maximum(jnp.linalg.norm(c, axis=1, keepdims=True), 1e-12), None

    centroids, _ = jax.lax.scan(step, centroids, None, length=iterations)
    return centroids, assign(centroids)


@dataclasses.dataclass
class V2MethodState:
    """`assignment` [heads, N] int32: each image's cluster per head for the epoch in progress
    (-1: the image has no bank row, no target); None before the first clustering."""

    assignment: np.ndarray | None = None


V2_RECORD_KEYS = ("nmi_prev", "nmi_labels", "ari_labels", "acc_labels", "nonempty_clusters",
                  "largest_cluster_frac", "size_entropy_normalized", "time_memory", "time_kmeans")


@methods.register("deepcluster_v2")
class DeepClusterV2(Method):
    metrics = ("loss",)
    record_keys = V2_RECORD_KEYS

    def __init__(self, run: Any):
        super().__init__(run)
        c, v = run.config, run.config.deepcluster_v2
        self.views_config = pipeline.view_configs(c)
        if any(i >= len(self.views_config) for i in v.crops_for_assign) or not v.crops_for_assign:
            raise ConfigError(f"config.deepcluster_v2.crops_for_assign={tuple(v.crops_for_assign)} "
                              f"must name views of config.data.views ({len(self.views_config)})")
        self.steps_per_epoch = len(run.source) // c.batch_size
        rows = self.steps_per_epoch * c.batch_size
        if max(v.prototypes) > rows:
            raise ConfigError(f"config.deepcluster_v2.prototypes={tuple(v.prototypes)}: k-means "
                              f"on a bank of {rows} rows takes at most {rows} prototypes")
        self.model = build_model(c)
        self.tx = optax.lars(lr_schedule(c, self.steps_per_epoch), weight_decay=v.weight_decay,
                             trust_coefficient=v.trust_coefficient, momentum=v.momentum)
        self.rows = rows
        self._step = jax.jit(self._train_step, donate_argnums=0)
        self._fill = jax.jit(self._fill_step, donate_argnums=0)
        self._feature_fn = jax.jit(lambda p, s, x: self.model.apply(
            {"params": p, "batch_stats": s}, normalize(x), train=False, output="embedding"))
        if run.info.num_classes < 2:
            run.print(f"dataset {c.data.name!r} has no labels: nmi_labels is null; nmi_prev "
                      f"measures how stable the clusters are")

    # --------------------------------------------------------------------- state
    def random_state(self) -> V2State:
        c, v, run = self.run.config, self.run.config.deepcluster_v2, self.run
        size = self.views_config[0].image_size
        bank_sharding = NamedSharding(run.mesh, PartitionSpec(None, AXIS, None))
        index_sharding = NamedSharding(run.mesh, PartitionSpec(AXIS))

        def make():
            variables = initial_variables(self.model, c.seed, size)
            params = variables["params"]
            return V2State(step=jnp.zeros((), jnp.int32), params=params,
                           batch_stats=variables.get("batch_stats", {}),
                           opt_state=self.tx.init(params),
                           bank=jnp.zeros((len(v.crops_for_assign), self.rows, v.feat_dim)),
                           bank_index=jnp.full((self.rows,), -1, jnp.int32),
                           bank_label=jnp.full((self.rows,), -1, jnp.int32))

        shapes = jax.eval_shape(make)
        shardings = jax.tree.map(lambda _: run.replicated, shapes)
        shardings = shardings.replace(bank=bank_sharding, bank_index=index_sharding,
                                      bank_label=index_sharding)
        return jax.jit(make, out_shardings=shardings)()

    def init_state(self) -> V2State:
        """The drawn state; with config.model.init, the converted network of that folder (a
        DeepCluster-v2 network, or a trunk: the head then stays drawn) in place of the drawn
        weights. The bank is filled by the network it starts from."""
        state, c = self.random_state(), self.run.config
        if c.model.init:
            params, stats = self.run.init_weights(state.params, state.batch_stats)
            state = state.replace(params=jax.device_put(params, self.run.replicated),
                                  batch_stats=jax.device_put(stats, self.run.replicated))
        return state

    @classmethod
    def initial_network(cls, config, mesh):
        model = build_model(config)
        size = pipeline.view_configs(config)[0].image_size
        variables = jax.jit(lambda: initial_variables(model, config.seed, size),
                            out_shardings=replicated(mesh))()
        return model, variables["params"], variables.get("batch_stats", {})

    def new_method_state(self) -> V2MethodState:
        return V2MethodState()

    def state_to_checkpoint(self, mstate: V2MethodState, epoch_done: bool) -> dict:
        if mstate.assignment is None:
            return {"assignment": np.full((1, 1), -2, np.int32)}
        return {"assignment": mstate.assignment.astype(np.int32)}

    def state_from_checkpoint(self, arrays: dict, epoch_done: bool) -> V2MethodState:
        a = arrays["assignment"]
        return V2MethodState(None if a.shape == (1, 1) and a[0, 0] == -2 else a)

    # --------------------------------------------------------------------- the jitted steps
    def _forward(self, params, batch_stats, views, train: bool, rng):
        """`rng`: the key of the trunk's dropout, when it has any (AlexNet, VGG)."""
        out, updates = self.model.apply({"params": params, "batch_stats": batch_stats},
                                        tuple(normalize(x) for x in views), train,
                                        method=DeepClusterV2Net.views, mutable=["batch_stats"],
                                        rngs={"dropout": rng})
        return out, updates["batch_stats"]

    def _train_step(self, state: V2State, views, targets, index, label):
        """targets [B, heads] int32 (-1: none); index, label [B]: the images and their labels."""
        c = self.run.config
        v = c.deepcluster_v2
        n_views, batch = len(views), views[0].shape[0]
        rng = jax.random.fold_in(jax.random.key(c.seed), state.step)

        def loss_fn(params):
            (z, scores), stats = self._forward(params, state.batch_stats, views, True, rng)
            losses = []
            for h, s in enumerate(scores):
                t = jnp.tile(targets[:, h], n_views)
                valid = t >= 0
                ce = optax.softmax_cross_entropy_with_integer_labels(
                    s / v.temperature, jnp.where(valid, t, 0))
                losses.append(jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(valid.sum(), 1))
            return sum(losses) / len(losses), (z, stats)

        (loss, (z, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        frozen = state.step < v.freeze_prototypes_niters

        def keep(path, new, old):
            return jnp.where(frozen, old, new) if _frozen_path(path) else new

        params = jax.tree_util.tree_map_with_path(keep, params, state.params)
        opt_state = jax.tree_util.tree_map_with_path(keep, opt_state, state.opt_state)
        position = (state.step % self.steps_per_epoch) * batch + jnp.arange(batch)
        z = jax.lax.stop_gradient(z).reshape(n_views, batch, -1)
        bank = state.bank.at[:, position].set(z[jnp.asarray(tuple(v.crops_for_assign))])
        new = state.replace(step=state.step + 1, params=params, batch_stats=stats,
                            opt_state=opt_state, bank=bank,
                            bank_index=state.bank_index.at[position].set(index),
                            bank_label=state.bank_label.at[position].set(label))
        return new, {"loss": loss}

    def _fill_step(self, state: V2State, views, index, label, b):
        """The memory bank's initial pass: each assignment crop's embeddings, in training mode (as
        the reference's freshly built network is), into rows of batch b."""
        zs, stats = [], state.batch_stats
        rng = jax.random.fold_in(jax.random.key(self.run.config.seed + 1), b)
        for i, x in enumerate(views):
            (z, _), stats = self._forward(state.params, stats, (x,), True,
                                          jax.random.fold_in(rng, i))
            zs.append(z)
        batch = views[0].shape[0]
        position = b * batch + jnp.arange(batch)
        return state.replace(batch_stats=stats,
                             bank=state.bank.at[:, position].set(jnp.stack(zs)),
                             bank_index=state.bank_index.at[position].set(index),
                             bank_label=state.bank_label.at[position].set(label))

    # --------------------------------------------------------------------- an epoch
    def _order(self, epoch: int) -> np.ndarray:
        c = self.run.config
        return np.random.default_rng([c.seed, epoch]).permutation(len(self.run.source))

    def _batches(self, epoch: int, start_batch: int, views, seed: int):
        c, run = self.run.config, self.run
        return pipeline.train_batches(run.source, self._order(epoch)[: self.rows], views,
                                      c.batch_size, seed=seed, start_batch=start_batch,
                                      decoder=c.data.decoder, **run.loader_options())

    def _global_views(self, images) -> tuple:
        images = images if isinstance(images, tuple) else (images,)
        return tuple(self.run.global_array(x) for x in images)

    def init_memory(self, state: V2State) -> V2State:
        """Fills the bank before the first epoch: the assignment crops of epoch 0's order, with
        their own random stream."""
        c, v = self.run.config, self.run.config.deepcluster_v2
        views = [self.views_config[i] for i in v.crops_for_assign]
        seed = int(np.random.SeedSequence([c.seed, 2**31 - 1]).generate_state(1)[0])
        for b, batch in enumerate(self._batches(0, 0, views, seed)):
            faults.point("extract_batch")
            self.run.stop.check("the memory bank's first pass", b + 1, self.steps_per_epoch,
                                c.log_every_steps)
            state = self._fill(state, self._global_views(batch["image"]),
                               self.run.global_array(batch["index"]),
                               self.run.global_array(batch["label"]), np.int32(b))
        return state

    def cluster(self, state: V2State, epoch: int) -> tuple[V2State, np.ndarray, np.ndarray]:
        """Per head, spherical k-means on its bank; the prototypes set to the centroids: (state,
        the images' assignments [heads, N], the first head's assignment of each bank row)."""
        c, v, run = self.run.config, self.run.config.deepcluster_v2, self.run
        index = np.asarray(jax.device_get(state.bank_index))
        first = None
        assignment = np.full((len(v.prototypes), len(run.source)), -1, np.int32)
        head = dict(state.params["head"])
        for h, k in enumerate(v.prototypes):
            bank = state.bank[h % len(v.crops_for_assign)]
            init = np.random.default_rng([c.seed, epoch, h]).permutation(self.rows)[:k]
            centroids, rows = _kmeans(bank, jnp.asarray(init, jnp.int32), v.kmeans_iterations)
            rows = np.asarray(jax.device_get(rows))
            faults.point("kmeans_iteration")
            run.stop.check("k-means", h + 1, len(v.prototypes))
            valid = index >= 0
            assignment[h, index[valid]] = rows[valid]
            first = rows if first is None else first
            head[f"prototypes{h}"] = {"kernel": jax.device_put(centroids.T, run.replicated)}
        params = {**state.params, "head": head}
        return state.replace(params=params), assignment, first

    def begin_epoch(self, state: V2State, mstate: V2MethodState, epoch: int):
        t0 = time.time()
        if int(jax.device_get(state.bank_index[0])) < 0:  # the bank was never filled
            state = self.init_memory(state)
        t1 = time.time()
        state, assignment, rows = self.cluster(state, epoch)
        t2 = time.time()
        index = np.asarray(jax.device_get(state.bank_index))
        labels = np.asarray(jax.device_get(state.bank_label))
        held = index >= 0  # bank rows holding an image: its first-head cluster, its label
        prev = (mstate.assignment[0][index[held]] if mstate.assignment is not None else None)
        keep = prev >= 0 if prev is not None else None
        record = {"nmi_prev": (metrics.nmi(prev[keep], rows[held][keep])
                               if prev is not None and keep.any() else None),
                  **label_metrics(labels[held], rows[held], self.run.info),
                  **{key: value for key, value in metrics.cluster_size_stats(
                      rows[held], self.run.config.deepcluster_v2.prototypes[0]).items()
                     if key in V2_RECORD_KEYS},
                  "time_memory": t1 - t0, "time_kmeans": t2 - t1}
        return state, V2MethodState(assignment), record

    def batches(self, mstate: V2MethodState, epoch: int, start_batch: int):
        c = self.run.config
        seed = int(np.random.SeedSequence([c.seed, epoch]).generate_state(1)[0])
        return self._batches(epoch, start_batch, self.views_config, seed), self.steps_per_epoch

    def train_step(self, state: V2State, batch: dict, mstate: V2MethodState):
        targets = mstate.assignment[:, batch["index"]].T.astype(np.int32)
        return self._step(state, self._global_views(batch["image"]),
                          self.run.global_array(np.ascontiguousarray(targets)),
                          self.run.global_array(batch["index"].astype(np.int32)),
                          self.run.global_array(batch["label"].astype(np.int32)))

    def format_record(self, r: dict) -> str:
        def f(key, spec=".4f"):
            return field(r, key, spec)

        return (f"epoch {r['epoch']}: loss {f('loss')} nmi_labels {f('nmi_labels')} "
                f"nmi_prev {f('nmi_prev')} nonempty {f('nonempty_clusters', 'd')} | memory "
                f"{f('time_memory', '.1f')}s kmeans {f('time_kmeans', '.1f')}s train "
                f"{f('time_train', '.1f')}s"
                + (f" | knn_top1 {f('knn_top1')}" if r.get("knn_top1") is not None else ""))

    # --------------------------------------------------------------------- evaluation, the end
    def network(self, state: V2State) -> Network:
        return Network(self.model, state.params, state.batch_stats, None)

    def feature_fn(self):
        return self._feature_fn

    def finish(self, state: V2State, mstate: V2MethodState, history: list[dict]) -> dict:
        drawn = self.random_state()
        return compare_with_baselines(self.run, self.model, self.network(state),
                                      Network(self.model, drawn.params, drawn.batch_stats, None))


_kmeans = jax.jit(spherical_kmeans, static_argnums=2)

