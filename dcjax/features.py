"""Feature extraction over a whole split, kept sharded on the devices.

`extract` runs a jitted feature function over the deterministic view of every image of a split and
writes each device's rows of each batch into that device's block of a row-sharded buffer: nothing
the size of the features is ever gathered on one host or device. The buffer is device-major (see
`layout_index`); `valid` marks the padding of the last batch and `image` maps rows to images.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dcjax.clustering.kmeans import to_host
from dcjax.data import pipeline
from dcjax.sharding import AXIS, rows
from dcjax.view_cache import ViewCache


@dataclasses.dataclass
class Features:
    """Row-sharded features of one split: rows [R, D], valid [R], image [R] (-1 on padding) and the
    true labels [N] in dataset order."""

    rows: jax.Array
    valid: np.ndarray
    image: np.ndarray
    labels: np.ndarray

    @property
    def row_labels(self) -> np.ndarray:
        """The true label of each row [R] (-1 on padding)."""
        out = np.full(self.image.shape, -1, np.int32)
        out[self.valid] = self.labels[self.image[self.valid]]
        return out

    def to_numpy(self) -> np.ndarray:
        """[N, D] on the host, in dataset order (for sizes that fit in host memory)."""
        host = to_host(self.rows)
        out = np.empty((self.labels.shape[0], host.shape[1]), host.dtype)
        out[self.image[self.valid]] = host[self.valid]
        return out


def layout_index(num_batches: int, batch: int, ndev: int, n: int) -> np.ndarray:
    """Dataset index of each row of the device-major feature buffer (-1 for padding): [nb * B].

    Device j holds rows j*B/ndev ... of every global batch b, at block b of its shard.
    """
    per_dev = batch // ndev
    rows = np.arange(num_batches * batch).reshape(num_batches, ndev, per_dev)
    index = rows.transpose(1, 0, 2).reshape(-1)
    return np.where(index < n, index, -1)


def write_rows_fn(mesh: Mesh) -> Callable:
    """(buffer [R, D], rows [B, D], b) -> buffer with each device's rows of batch b in its block b."""
    spec = PartitionSpec(AXIS)

    def local(buffer, rows, b):
        return jax.lax.dynamic_update_slice(buffer, rows.astype(buffer.dtype),
                                            (b * rows.shape[0], 0))

    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, PartitionSpec()),
                                 out_specs=spec), donate_argnums=0)


def all_processes(local: np.ndarray) -> np.ndarray:
    """Concatenation, in process order, of every process's equally long `local` array."""
    if jax.process_count() == 1:
        return local
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(local, tiled=True))


LOG_PROGRESS_SECONDS = 60.0  # where stderr is no terminal: a progress line this often


class _Lines:
    """A file for tqdm that turns each refresh ('\\r' + status) into a line of its own: progress
    in a log file or a batch job's output, where a terminal's redrawn line would be one long line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable, *, images_per_step: int | None = None, **kwargs):
    """tqdm over `iterable` on process 0: a live line on a terminal (stderr); elsewhere a plain line
    on stdout every LOG_PROGRESS_SECONDS, none for a phase shorter than that. With
    `images_per_step`, rates and counts are in images."""
    from tqdm import tqdm

    if images_per_step:
        kwargs.update(unit="img", unit_scale=images_per_step)
    if jax.process_index() != 0:
        return tqdm(iterable, disable=True, **kwargs)
    if sys.stderr.isatty():
        return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)
    return tqdm(iterable, leave=False, file=_Lines(sys.stdout), mininterval=LOG_PROGRESS_SECONDS,
                delay=LOG_PROGRESS_SECONDS, bar_format="{desc}: {percentage:3.0f}% {n_fmt}/"
                "{total_fmt} [{elapsed} elapsed, {remaining} left, {rate_fmt}]", **kwargs)


@functools.lru_cache(maxsize=16)
def _zeros(shape: tuple, sharding: NamedSharding, dtype=jnp.float32):
    """A jitted zeros of `shape` laid out by `sharding`, made once per (shape, sharding, dtype):
    extraction runs every epoch, and a jit built at each call would compile each time."""
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


def output_width(feature_fn: Callable, variables: tuple, image_size: int) -> int:
    """The width D of `feature_fn(*variables, images) -> [B, D]` (traced, nothing computed)."""
    shape = jax.eval_shape(feature_fn, *variables,
                           jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.uint8)).shape
    return int(shape[-1])


def extract(feature_fn: Callable, variables: tuple, source: Any, view: pipeline.ViewConfig,
            batch: int, dim: int | None, mesh: Mesh, loader_options: dict, write_rows: Callable | None = None,
            desc: str = "features", dtype=jnp.float32,
            on_batch: Callable[[int, int], None] | None = None,
            cache: ViewCache | None = None) -> Features:
    """`feature_fn(*variables, images) -> [B, dim]` over every image of `source`, sharded rows
    (stored as `dtype`; `dim` None: the function's own width). `on_batch(done, total)` runs after
    each batch (it may raise to stop).
    With a `cache`, the decoded view is kept (first call) or read back (later calls with the same
    data, view, batch and process layout): the network gets the same arrays either way."""
    ndev, n = mesh.devices.size, len(source)
    nb = math.ceil(n / batch)
    if dim is None:
        dim = output_width(feature_fn, variables, view.image_size)
    rows_sharding = rows(mesh)
    write_rows = write_rows or write_rows_fn(mesh)
    buffer = _zeros((nb * batch, dim), rows_sharding, jnp.dtype(dtype))()
    labels_local, index_local = [], []
    per_host = batch // loader_options.get("process_count", 1)
    key = cache.key(view, batch, nb, per_host, mesh) if cache is not None else None
    built = cache.lookup(key) if cache is not None else None
    if built is not None:
        for b in progress(range(nb), total=nb, desc=f"{desc} (cached view)",
                              images_per_step=batch):
            images = built.images[b]
            if not isinstance(images, jax.Array):
                images = jax.make_array_from_process_local_data(rows_sharding, np.asarray(images))
            buffer = write_rows(buffer, feature_fn(*variables, images), b)
            labels_local.append(built.label[b])
            index_local.append(built.index[b])
            if on_batch is not None:
                on_batch(b + 1, nb)
    else:
        if cache is not None:
            cache.begin(key, (per_host, view.image_size, view.image_size, 3), mesh,
                        total_images=n)
        try:
            batches = pipeline.ordered_batches(source, view, batch, **loader_options)
            for b, host_batch in enumerate(progress(batches, total=nb, desc=desc,
                                                              images_per_step=batch)):
                images = jax.make_array_from_process_local_data(rows_sharding, host_batch["image"])
                buffer = write_rows(buffer, feature_fn(*variables, images), b)
                labels_local.append(host_batch["label"])
                index_local.append(host_batch["index"])
                if cache is not None:
                    cache.put(b, host_batch, images)
                if on_batch is not None:
                    on_batch(b + 1, nb)
        except BaseException:
            if cache is not None:
                cache.abandon()
            raise
        if cache is not None:
            cache.finish()
    # Every process has the same number of rows (padding included), so they gather evenly.
    index = all_processes(np.concatenate(index_local))
    labels = np.empty(n, np.int32)
    labels[index[index >= 0]] = all_processes(np.concatenate(labels_local))[index >= 0]
    image = layout_index(nb, batch, ndev, n)
    return Features(rows=buffer, valid=image >= 0, image=image, labels=labels)
