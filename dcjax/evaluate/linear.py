"""Linear probes on each conv layer of a frozen network (the paper's Table 1 protocol).

The network runs in eval mode (BatchNorm running statistics, no dropout) and receives no gradient.
The output of each conv layer's ReLU (after BN, before pooling) is average-pooled to about 9k values
and flattened; one linear classifier per layer is trained on it with SGD (momentum 0.9, weight
decay, cosine-decayed learning rate) on crop + flip augmented views of the training split, all five
in one jitted step over one forward pass. Top-1 is measured on the centre view of the held-out split.
The crops are RandomResizedCrop (config.eval.crop_scale) by default; config.eval.linear_views=
'translate' uses the reference eval_linear.py's instead (the centre view shifted by whole pixels, up
to 16/224 of its side, RandomCrop(224) of a 256 px image), and config.eval.linear_schedule=
'reference' its learning rate lr / sqrt(1 + lr * weight_decay * step) instead of the cosine.
config.eval.linear_normalize (off by default, as in the reference) standardises each pooled feature
before its classifier, as a BatchNorm without scale and shift (batch statistics in training, running
averages in testing); standardised 9k-dimensional inputs need a learning rate well below 0.01.
config.eval.linear_views='center' (not the paper's protocol; a fast diagnostic) computes each split's
centre-view pooled features once, caches them row-sharded on the devices as float16, and trains the
same classifiers on shuffled batches of those rows: one forward pass per split instead of one per
probe epoch, and no augmentation.

Pooling: at 224 px AlexNet, the paper's table (kernel/stride/pad, zero padding counted in the
average): conv1 6/6/3 -> 96x10x10 = 9600, conv2 4/4/0 -> 256x6x6 = 9216, conv3 and conv4 3/3/1 ->
384x5x5 = 9600, conv5 2/2/0 -> 256x6x6 = 9216. For every other geometry (the small variant, VGG16):
adaptive average pooling (PyTorch's AdaptiveAvgPool2d bins) to the largest g x g grid, g <= the
layer's side, with channels x g^2 <= config.eval.probe_dim; a layer already that small is unpooled.

`--features=pixels` trains the same classifier on raw pixels of the centre view reduced by PCA to
config.eval.pixel_pca_dim components and standardised (the "raw pixels" row).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from dcjax.clustering.pca import apply_pca, fit_pca
from dcjax.data import pipeline
from dcjax.data.pipeline import loader_options, normalize
from dcjax.evaluate.common import Splits, rows_sharding
from dcjax.features import progress
from dcjax.runs import Network
from dcjax.sharding import check_features, put
from dcjax.sharding import replicated as sharding_replicated


@dataclasses.dataclass(frozen=True)
class Pooling:
    """Average pooling of a [B, H, W, C] activation: fixed window (kernel, stride, pad) or adaptive
    to a grid x grid output."""

    size: int  # input side H (= W)
    channels: int
    kernel: int = 0
    stride: int = 0
    pad: int = 0
    grid: int = 0  # > 0: adaptive

    @property
    def out_side(self) -> int:
        if self.grid:
            return self.grid
        return (self.size + 2 * self.pad - self.kernel) // self.stride + 1

    @property
    def dim(self) -> int:
        return self.channels * self.out_side ** 2

    def describe(self) -> str:
        if self.grid:
            kind = "none" if self.grid == self.size else f"adaptive {self.grid}x{self.grid}"
        else:
            kind = f"avg {self.kernel}/{self.stride}/{self.pad}"
        return f"{self.size}x{self.size}x{self.channels} {kind} -> {self.dim}"

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        if self.grid:
            if self.grid != self.size:
                m = jnp.asarray(adaptive_matrix(self.size, self.grid))
                x = jnp.einsum("gh,bhwc,fw->bgfc", m, x, m)
        else:
            p = self.pad
            x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, self.kernel, self.kernel, 1),
                                      (1, self.stride, self.stride, 1),
                                      ((0, 0), (p, p), (p, p), (0, 0))) / self.kernel ** 2
        return x.reshape(x.shape[0], -1)


def adaptive_matrix(size: int, grid: int) -> np.ndarray:
    """[grid, size] averaging weights: bin i covers floor(i*size/grid) .. ceil((i+1)*size/grid)-1."""
    m = np.zeros((grid, size), np.float32)
    for i in range(grid):
        lo, hi = (i * size) // grid, -(-((i + 1) * size) // grid)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def choose_pooling(model: Any, image_size: int, shapes: dict[str, tuple[int, ...]],
                   target: int) -> dict[str, Pooling]:
    """The pooling of each probed layer whose activation has shape [B, H, W, C]: the one the model
    declares (`layer_pooling`, e.g. the paper's table for AlexNet at 224 px), else adaptive to
    about `target` dims."""
    declared = model.layer_pooling(image_size) or {}
    out = {}
    for name, (_, h, w, c) in shapes.items():
        if name in declared:
            out[name] = Pooling(h, c, *declared[name])
            continue
        if h != w:
            raise ValueError(f"linear probes expect square activations, got {h}x{w}")
        grid = max(1, min(h, math.isqrt(max(target // c, 1))))
        out[name] = Pooling(h, c, grid=grid)
    return out


def probe_optimizer(config: ml_collections.ConfigDict, total_steps: int):
    e = config.eval
    if e.linear_schedule == "reference":
        lr, wd = e.linear_lr, e.linear_weight_decay

        def schedule(step):
            return lr / jnp.sqrt(1.0 + lr * wd * step)
    else:
        schedule = optax.cosine_decay_schedule(e.linear_lr, max(total_steps, 1))
    return optax.chain(optax.add_decayed_weights(e.linear_weight_decay),
                       optax.sgd(schedule, momentum=e.linear_momentum or None))


def init_probes(dims: dict[str, int], num_classes: int) -> dict:
    return {name: {"kernel": jnp.zeros((d, num_classes)), "bias": jnp.zeros((num_classes,))}
            for name, d in dims.items()}


def init_norm_stats(dims: dict[str, int]) -> dict:
    return {name: {"mean": jnp.zeros((d,)), "var": jnp.ones((d,))} for name, d in dims.items()}


NORM_MOMENTUM = 0.9
NORM_EPS = 1e-5


def _logits(head: dict, x: jax.Array) -> jax.Array:
    return x @ head["kernel"] + head["bias"]


def _standardize(x: jax.Array, stats: dict | None) -> jax.Array:
    if stats is None:
        return x
    return (x - stats["mean"]) * jax.lax.rsqrt(stats["var"] + NORM_EPS)


def make_probe_fns(feature_fn: Callable, tx, normalize: bool) -> tuple[Callable, Callable]:
    """(train step, eval step) for a dict of linear heads on `feature_fn(variables, images)`, which
    returns {layer name: [B, dim]}.

    With `normalize`, each feature is standardised before its head, like a BatchNorm without scale
    or shift: by the batch's statistics in training (global batch), by their running averages in
    testing. `stats` is then {name: {'mean', 'var'}}, else None. Test images of shape
    [B, V, ...] (several views of each, e.g. ten crops) are scored by their softmax averaged over
    the V views.
    """

    def train_step(probes, opt_state, stats, variables, images, labels):
        feats = jax.lax.stop_gradient(feature_fn(variables, images))
        if normalize:
            batch = {name: {"mean": f.mean(0), "var": f.var(0)} for name, f in feats.items()}
            feats = {name: _standardize(f, batch[name]) for name, f in feats.items()}
            stats = jax.tree.map(lambda s, b: NORM_MOMENTUM * s + (1 - NORM_MOMENTUM) * b,
                                 stats, batch)

        def loss_fn(probes):
            losses = {name: optax.softmax_cross_entropy_with_integer_labels(
                _logits(probes[name], feats[name]), labels).mean() for name in probes}
            return sum(losses.values()), losses

        (_, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(probes)
        updates, opt_state = tx.update(grads, opt_state, probes)
        return optax.apply_updates(probes, updates), opt_state, stats, losses

    def eval_step(probes, stats, variables, images, labels, mask):
        views = images.shape[1] if images.ndim == 5 else 0
        if views:  # [B, V, H, W, C] -> [B * V, H, W, C], each image's views side by side
            images = images.reshape(-1, *images.shape[2:])
        feats = feature_fn(variables, images)

        def scores(name):
            logits = _logits(probes[name], _standardize(feats[name],
                                                        stats[name] if normalize else None))
            if not views:
                return logits
            return jax.nn.softmax(logits).reshape(-1, views, logits.shape[-1]).mean(1)

        return {name: jnp.sum((jnp.argmax(scores(name), -1) == labels) & mask) for name in probes}

    return jax.jit(train_step, donate_argnums=(0, 1, 2)), jax.jit(eval_step)


def conv_features(net: Network, poolings: list[Pooling], names: list[str]) -> Callable:
    """(variables, images) -> {layer name: pooled activation} of the probed layers."""

    def features(variables, images):
        params, batch_stats = variables
        acts = net.model.apply({"params": params, "batch_stats": batch_stats}, normalize(images),
                               train=False, output="layers")
        return {name: pool(acts[name]) for name, pool in zip(names, poolings)}

    return features


def layer_shapes(net: Network, image_size: int) -> dict[str, tuple[int, ...]]:
    """{name: [1, H, W, C]} of the layers the model's 'layers' output gives, in the model's order
    (`layer_names`)."""
    acts = jax.eval_shape(lambda v, x: net.model.apply(
        {"params": v[0], "batch_stats": v[1]}, x, train=False, output="layers"),
        net.variables, jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
    return {name: tuple(acts[name].shape) for name in net.model.layer_names}


def linear_probe(config: ml_collections.ConfigDict, net: Network, splits: Splits, mesh: Mesh,
                 log: Callable[[str], None] = print,
                 on_batch: Callable[[int, int], None] | None = None) -> dict:
    """Trains and tests one linear probe per conv layer; returns the result record.
    `on_batch(done, total)` runs after every training batch (it may raise to stop)."""
    e, d = config.eval, config.data
    t0 = time.time()
    chosen = choose_pooling(net.model, d.image_size, layer_shapes(net, d.image_size), e.probe_dim)
    names, poolings = list(chosen), list(chosen.values())
    n, batch = len(splits.train), e.batch_size
    steps = pipeline.num_train_batches(n, batch)
    if steps < 1:
        raise ValueError(f"config.eval.batch_size={batch} exceeds the {n} training images")
    tx = probe_optimizer(config, steps * e.linear_epochs)
    dims = {name: p.dim for name, p in zip(names, poolings)}
    replicated = sharding_replicated(mesh)
    probes = put(init_probes(dims, splits.info.num_classes), replicated)
    stats = put(init_norm_stats(dims), replicated) if e.linear_normalize else None
    opt_state = jax.jit(tx.init, out_shardings=replicated)(probes)
    augmented = e.linear_views in ("augmented", "translate")
    run = _augmented_views if augmented else _center_views
    poll = _counted(on_batch, steps * e.linear_epochs)
    tests, history, extra = run(config, net, splits, mesh, poolings, names, tx, steps,
                                (probes, opt_state, stats), log, poll)
    m = len(splits.test)
    layers = {name: {**layer_scores(tests, name, m), "dim": p.dim, "pooling": p.describe(),
                     "final_train_loss": history[-1][name] if history else None}
              for name, p in zip(names, poolings)}
    return {"layers": layers, "protocol": e.protocol, "views": e.linear_views,
            "test_views": e.linear_test_views, "test_every": e.linear_test_every,
            "epochs": e.linear_epochs, "batch_size": batch,
            "normalize": bool(e.linear_normalize), "lr": e.linear_lr,
            "momentum": e.linear_momentum, "schedule": e.linear_schedule,
            "weight_decay": e.linear_weight_decay,
            "crop_scale": list(e.crop_scale) if e.linear_views == "augmented" else None,
            "flip": bool(d.flip) if augmented else None,
            "train_images": n, "test_images": m, **extra, "seconds": time.time() - t0}


def _counted(on_batch: Callable[[int, int], None] | None, total: int) -> Callable[[], None]:
    """A no-argument poll that calls on_batch(done, total) with a running count."""
    done = 0

    def poll() -> None:
        nonlocal done
        done += 1
        if on_batch is not None:
            on_batch(done, total)

    return poll


def _add_losses(sums: dict, losses: dict) -> dict:
    """Adds a step's losses into host floats. Fetching them waits for the step, so at most one step
    is in flight. On fake CPU devices (the tests' 4 on 2 cores) a host that runs many small sharded
    steps ahead lets their collectives deadlock in XLA:CPU's rendezvous ("only 3 of them arrived"),
    which aborts the process. The wait is small beside a step's work."""
    host = jax.device_get(losses)
    return {name: sums[name] + float(host[name]) for name in sums}


def _log_epoch(log: Callable[[str], None], epoch: int, sums: dict, steps: int) -> dict:
    mean = {name: float(v) / steps for name, v in sums.items()}
    log(f"probe epoch {epoch}: train loss " + " ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    return mean


@dataclasses.dataclass
class ViewSource:
    """What one probe variant feeds `fit_probes`: `features(variables, x)` -> {layer: [B, dim]};
    `train(epoch)` yields the epoch's (x, labels) batches, `steps` of them; `test()` yields
    (x, labels, mask) batches of the held-out split."""

    features: Callable
    variables: Any
    train: Callable[[int], Iterable[tuple]]
    test: Callable[[], Iterable[tuple]]
    steps: int


def fit_probes(source: ViewSource, names: list[str], tx, state: tuple, epochs: int,
               normalize: bool, log: Callable[[str], None], poll: Callable[[], None],
               test_every: int = 0):
    """The one fit loop of every probe variant: `epochs` epochs of SGD on the linear heads over
    `source.train`, with the correct counts on `source.test` after the last epoch and, when
    `test_every` > 0, after every `test_every`-th. Returns (tests [(epoch, {layer: correct})], whose
    last entry is the last epoch's, and history [{layer: mean train loss}] per epoch)."""
    train_step, eval_step = make_probe_fns(source.features, tx, normalize)
    probes, opt_state, stats = state
    history, tests = [], []
    for epoch in range(epochs):
        sums = {name: 0.0 for name in names}
        for x, y in progress(source.train(epoch), total=source.steps, desc=f"probe epoch {epoch}"):
            probes, opt_state, stats, losses = train_step(probes, opt_state, stats,
                                                          source.variables, x, y)
            sums = _add_losses(sums, losses)
            poll()
        history.append(_log_epoch(log, epoch, sums, source.steps))
        if epoch == epochs - 1 or (test_every > 0 and (epoch + 1) % test_every == 0):
            correct = {name: 0 for name in names}
            for x, y, mask in progress(source.test(), desc="probe test"):
                counts = eval_step(probes, stats, source.variables, x, y, mask)
                correct = {name: correct[name] + int(counts[name]) for name in names}
            tests.append((epoch, correct))
            if epoch < epochs - 1:
                log(f"probe epoch {epoch}: test correct " +
                    " ".join(f"{k} {v}" for k, v in correct.items()))
    return tests, history


def layer_scores(tests: list[tuple[int, dict]], name: str, m: int) -> dict:
    """A layer's top-1 after the last epoch and, over the tested epochs, the best top-1 and after
    how many epochs (chosen on the test split, as the reference eval_linear.py reports it), and
    the curve {epochs trained: top-1}."""
    curve = [(epoch + 1, correct[name] / m) for epoch, correct in tests]
    best_after, best = max(curve, key=lambda t: (t[1], -t[0]))
    return {"top1": curve[-1][1], "best_top1": best, "best_after_epochs": best_after,
            "top1_after_epochs": {str(e): top1 for e, top1 in curve}}


def _augmented_views(config, net, splits, mesh, poolings, names, tx, steps, state, log, poll):
    """The paper's probe: every step a forward pass of a new crop + flip view of each image."""
    e = config.eval
    n, batch = len(splits.train), e.batch_size
    rows = rows_sharding(mesh)
    crop = "translate" if e.linear_views == "translate" else "resized"
    view = dataclasses.replace(pipeline.view_config(config), crop_scale=tuple(e.crop_scale), crop=crop)

    def arrays(b, *keys):
        return tuple(jax.make_array_from_process_local_data(
            rows, b[k].astype(np.int32) if k == "label" else b[k]) for k in keys)

    def train(epoch):
        order = np.random.default_rng([config.seed, 7919, epoch]).permutation(n)
        for b in pipeline.train_batches(splits.train, order, view, batch,
                                        seed=config.seed * 1_000_003 + epoch,
                                        decoder=config.data.decoder, **loader_options(config)):
            yield arrays(b, "image", "label")

    def test():
        for b in pipeline.ordered_batches(splits.test, pipeline.view_config(config), batch,
                                          ten_crop=e.linear_test_views == "ten_crop",
                                          **loader_options(config)):
            yield arrays(b, "image", "label", "mask")

    source = ViewSource(conv_features(net, poolings, names), net.variables, train, test, steps)
    tests, history = fit_probes(source, names, tx, state, e.linear_epochs, e.linear_normalize,
                                log, poll, e.linear_test_every)
    return tests, history, {}


CACHE_DTYPE = jnp.float16


def _center_views(config, net, splits, mesh, poolings, names, tx, steps, state, log, poll):
    """The fast variant: each split's centre-view pooled features computed once (one forward pass),
    kept row-sharded on the devices as float16 (all layers side by side), and the classifiers
    trained on shuffled batches of those rows."""
    from dcjax.features import extract
    e = config.eval
    batch = e.batch_size
    bounds = np.cumsum([0] + [p.dim for p in poolings])
    features = conv_features(net, poolings, names)

    def concatenated(params, batch_stats, images):
        feats = features((params, batch_stats), images)
        return jnp.concatenate([feats[name] for name in names], axis=-1).astype(CACHE_DTYPE)

    t0 = time.time()
    cached = {}
    for split, source in (("train", splits.train), ("test", splits.test)):
        f = extract(jax.jit(concatenated), net.variables, source, pipeline.view_config(config), batch,
                    int(bounds[-1]), mesh, loader_options(config), desc=f"{split} features",
                    dtype=CACHE_DTYPE)
        check_features(f.rows, f"the {split} split's float16 centre-view conv features "
                       f"(config.eval.linear_views='augmented' does not cache them)")
        labels = put(f.row_labels, rows_sharding(mesh))
        cached[split] = (f, labels)
    feature_seconds = time.time() - t0
    log(f"centre-view features of {len(splits.train)} + {len(splits.test)} images "
        f"({int(bounds[-1])} values each) in {feature_seconds:.0f} s")

    def split_rows(variables, x):
        del variables
        x = x.astype(jnp.float32)
        return {name: x[:, a:b] for name, a, b in zip(names, bounds[:-1], bounds[1:])}

    replicated = sharding_replicated(mesh)
    take = _take_fn(rows_sharding(mesh))
    train_rows, train_labels = cached["train"]
    test_rows, test_labels = cached["test"]
    positions = np.flatnonzero(train_rows.valid).astype(np.int32)

    def train(epoch):
        order = np.random.default_rng([config.seed, 7919, epoch]).permutation(positions)
        for idx in order[: steps * batch].reshape(steps, batch):
            x, y, _ = take(train_rows.rows, train_labels, put(idx, replicated))
            yield x, y

    def test():
        for start in range(0, test_rows.valid.shape[0], batch):
            yield take(test_rows.rows, test_labels,
                       put(np.arange(start, start + batch, dtype=np.int32), replicated))

    source = ViewSource(split_rows, (), train, test, steps)
    tests, history = fit_probes(source, names, tx, state, e.linear_epochs, e.linear_normalize,
                                log, poll, e.linear_test_every)
    return tests, history, {"feature_seconds": feature_seconds}


@functools.lru_cache(maxsize=8)
def _take_fn(sharding: jax.sharding.NamedSharding) -> Callable:
    """(rows [R, D], labels [R], positions [B]) -> the B rows, their labels and which are real
    images (labels >= 0), laid out by `sharding`."""

    def take(rows, labels, idx):
        y = labels[idx]
        return rows[idx], jnp.maximum(y, 0), y >= 0

    return jax.jit(take, out_shardings=(sharding, sharding, sharding))


# ------------------------------------------------------------------ raw pixels


def pixel_arrays(config: ml_collections.ConfigDict, source) -> tuple[np.ndarray, np.ndarray]:
    """Centre views of every image of `source` as flat float32 rows in [0, 1], and the labels."""
    xs, ys = [], []
    for b in pipeline.ordered_batches(source, pipeline.view_config(config), config.eval.batch_size,
                                      num_threads=config.data.num_threads):
        keep = b["mask"]
        xs.append(b["image"][keep].reshape(int(keep.sum()), -1))
        ys.append(b["label"][keep])
    return np.concatenate(xs).astype(np.float32) / 255.0, np.concatenate(ys).astype(np.int32)


def train_linear(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                 num_classes: int, config: ml_collections.ConfigDict,
                 log: Callable[[str], None] = print) -> dict:
    """The probe's classifier and optimizer on fixed feature arrays (no augmentation), through the
    same fit loop as the network's probes."""
    e = config.eval
    n, batch = x_train.shape[0], min(e.batch_size, x_train.shape[0])
    steps = n // batch
    tx = probe_optimizer(config, steps * e.linear_epochs)
    probes = init_probes({"x": x_train.shape[1]}, num_classes)
    xt, yt = jnp.asarray(x_train), jnp.asarray(y_train)

    def train(epoch):
        order = np.random.default_rng([config.seed, 7919, epoch]).permutation(n)[: steps * batch]
        for idx in order.reshape(steps, batch):
            yield xt[idx], yt[idx]

    def test():
        yield jnp.asarray(x_test), jnp.asarray(y_test), jnp.ones(len(y_test), bool)

    # No running statistics: the caller standardises the arrays.
    source = ViewSource(lambda variables, x: {"x": x}, (), train, test, steps)
    tests, history = fit_probes(source, ["x"], tx, (probes, tx.init(probes), None),
                                e.linear_epochs, False, log, lambda: None, e.linear_test_every)
    return {**layer_scores(tests, "x", len(y_test)), "final_train_loss": history[-1]["x"]}


def pixel_probe(config: ml_collections.ConfigDict, splits: Splits, mesh: Mesh,
                log: Callable[[str], None] = print) -> dict:
    """Linear classifier on PCA components of raw pixels (standardised with train statistics)."""
    t0 = time.time()
    x_train, y_train = pixel_arrays(config, splits.train)
    x_test, y_test = pixel_arrays(config, splits.test)
    dim = min(config.eval.pixel_pca_dim, x_train.shape[1])
    pca = fit_pca(x_train, dim, mesh=mesh)
    z_train = np.asarray(apply_pca(pca, x_train, whiten=False, l2_normalize=False, mesh=mesh))
    z_test = np.asarray(apply_pca(pca, x_test, whiten=False, l2_normalize=False, mesh=mesh))
    mu, sd = z_train.mean(0), z_train.std(0) + 1e-6
    result = train_linear((z_train - mu) / sd, y_train, (z_test - mu) / sd, y_test,
                          splits.info.num_classes, config, log)
    layer = {**result, "dim": dim, "pooling": f"{x_train.shape[1]} pixels, PCA {dim}"}
    e = config.eval
    return {"layers": {"pixels": layer}, "protocol": e.protocol, "test_views": "center",
            "test_every": e.linear_test_every, "epochs": e.linear_epochs, "lr": e.linear_lr,
            "schedule": e.linear_schedule, "weight_decay": e.linear_weight_decay,
            "train_images": len(y_train), "test_images": len(y_test), "seconds": time.time() - t0}
