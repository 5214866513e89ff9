"""The training view on NVIDIA DALI (`config.data.loader = 'dali'`): decode, crop, resize and flip
on the GPU, fed by the host-side sampler's index array (docs/design.md section 6).

What stays on the host is what makes a run exact and resumable: for each image of each batch the
host reads the stored bytes (ArrayRecord, by index), reads its size from the header and draws its
RandomResizedCrop box and flip with the same function and random stream as the grain path
(`np.random.default_rng(pipeline.view_seed(seed, position, 0))`, `pipeline.draw_view`). So both loaders
crop the same boxes and flip the same images, and a run resumed at any batch sees what an
uninterrupted one would have seen. DALI does the pixel work: `fn.decoders.image_slice` decodes
only the box (nvJPEG's ROI decode with `device='mixed'` on GPUs, libjpeg-turbo on the CPU),
`fn.resize` (linear, antialiased) to `image_size` and `fn.flip`.

Devices: on GPU devices, one DALI pipeline per local device, each fed that device's rows of every
global batch (the same rows grain would put there); their outputs, on the GPUs already, become one
row-sharded jax.Array without a trip through host memory. On CPU devices (tests, and a CPU host
that has DALI) one pipeline of DALI's CPU operators feeds this process's rows as numpy, and the
trainer places them as it places grain's batches.

DALI is optional: `nvidia-dali-cuda120` or `-cuda130` (the pyproject `dali` extra, or
requirements-dali.txt); without it, selecting this loader is a one-line error.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np

from dcjax.data.images import jpeg_orientation
from dcjax.data.pipeline import (
    Batch,
    ViewConfig,
    _host_batches,
    draw_view,
    num_train_batches,
    view_seed,
)


def available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False
    return True


def require() -> None:
    if not available():
        raise ImportError("config.data.loader='dali' needs NVIDIA DALI: pip install "
                          "nvidia-dali-cuda120 (or -cuda130 for CUDA 13), or -r requirements-dali.txt")


def image_size_of(data: bytes) -> tuple[int, int]:
    """(height, width) of encoded image bytes as displayed (EXIF orientation applied), from the
    header alone."""
    from PIL import Image

    with Image.open(io.BytesIO(bytes(data))) as im:
        w, h = im.size
    if jpeg_orientation(data) in (5, 6, 7, 8):  # rotated by 90 degrees
        h, w = w, h
    return h, w


def crop_plan(value: Any, view: ViewConfig, seed32: int, position: int):
    """(bytes as uint8, anchor (x, y), shape (w, h), flip) of one image: the box and flip
    `pipeline.train_view` draws for it (same function, same random stream)."""
    if not isinstance(value, (bytes, np.bytes_)):
        raise ValueError("the DALI loader reads encoded images; this dataset stores arrays "
                         "(use config.data.loader='grain')")
    rng = np.random.default_rng(view_seed(seed32, position, 0))
    h, w = image_size_of(value)
    d = draw_view(h, w, view, rng)
    return (np.frombuffer(bytes(value), np.uint8), np.array([d.left, d.top], np.float32),
            np.array([d.width, d.height], np.float32), np.array(int(d.flip), np.int32))


def _pipeline(view: ViewConfig, batch: int, num_threads: int, prefetch: int, device_id,
              callback):
    from nvidia.dali import fn, pipeline_def, types

    gpu = device_id is not None

    @pipeline_def(batch_size=batch, num_threads=max(1, num_threads), device_id=device_id,
                  prefetch_queue_depth=max(1, prefetch))
    def train_view():
        data, anchor, shape, flip = fn.external_source(
            source=callback, num_outputs=4, batch=True, batch_info=True,
            dtype=[types.UINT8, types.FLOAT, types.FLOAT, types.INT32])
        images = fn.decoders.image_slice(data, anchor, shape, device="mixed" if gpu else "cpu",
                                         output_type=types.RGB, axis_names="WH",
                                         normalized_anchor=False, normalized_shape=False)
        images = fn.resize(images, resize_x=view.image_size, resize_y=view.image_size,
                           interp_type=types.INTERP_LINEAR, antialias=True)
        return fn.flip(images, horizontal=flip)

    pipe = train_view()
    pipe.build()
    return pipe


class _Feeder:
    """DALI's external source for one pipeline: at iteration i, the plans of rows `cols` of
    host batch `start_batch + i` (StopIteration after the last batch)."""

    def __init__(self, source, rows, positions, cols, view, seed32, start_batch):
        self.source, self.rows, self.positions, self.cols = source, rows, positions, cols
        self.view, self.seed32, self.start = view, seed32, start_batch

    def __call__(self, info):
        b = self.start + info.iteration
        if b >= len(self.rows):
            raise StopIteration
        keys = [int(i) for i in self.rows[b, self.cols]]
        if hasattr(self.source, "__getitems__"):
            records = list(self.source.__getitems__(keys))
        else:
            records = [self.source[k] for k in keys]
        plans = [crop_plan(r["image"], self.view, self.seed32, int(p))
                 for r, p in zip(records, self.positions[b, self.cols])]
        return [list(column) for column in zip(*plans)]


def train_batches(source: Any, indices: np.ndarray, view: ViewConfig, global_batch: int, *,
                  seed: int, mesh, start_batch: int = 0, process_index: int = 0,
                  process_count: int = 1, num_threads: int = 2, prefetch: int = 2,
                  **unused) -> Iterator[Batch]:
    """`pipeline.train_batches` on DALI: the same batches (rows, boxes, flips), full batches only.

    Yields {'image', 'index', 'label', 'mask'} like grain's loader; 'image' is a row-sharded
    jax.Array over `mesh` on GPU devices, this process's numpy rows on CPU devices."""
    require()
    import jax

    del unused
    if view.crop != "resized":
        raise ValueError(f"the DALI loader implements the 'resized' crop, not {view.crop!r}")
    nb = num_train_batches(len(indices), global_batch)
    rows, positions = _host_batches(np.asarray(indices)[: nb * global_batch], global_batch,
                                    process_index, process_count)
    per_host = global_batch // process_count
    seed32 = int(seed) & 0xFFFFFFFF
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    gpu = local[0].platform == "gpu"
    if gpu:
        per_dev = per_host // len(local)
        groups = [np.arange(j * per_dev, (j + 1) * per_dev) for j in range(len(local))]
        ids = [d.local_hardware_id for d in local]
    else:
        groups, ids = [np.arange(per_host)], [None]
    pipes = [_pipeline(view, len(cols), num_threads, prefetch, device_id,
                       _Feeder(source, rows, positions, cols, view, seed32, start_batch))
             for cols, device_id in zip(groups, ids)]
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names[0]))
    for b in range(start_batch, nb):
        outputs = [pipe.run()[0] for pipe in pipes]
        if gpu:
            from nvidia.dali.plugin.jax.integration import _to_jax_array

            shards = [_to_jax_array(out.as_tensor(), False) for out in outputs]
            images = jax.make_array_from_single_device_arrays(
                (global_batch, view.image_size, view.image_size, 3), sharding,
                [jax.device_put(s, d) for s, d in zip(shards, local)])
        else:
            images = np.asarray(outputs[0].as_array())
        index = rows[b]
        yield {"image": images, "index": index.astype(np.int32),
               "label": np.full(len(index), -1, np.int32), "mask": index >= 0}


def is_global(images) -> bool:
    """Whether a batch's images are already a global jax.Array (DALI on GPUs)."""
    import jax

    return isinstance(images, jax.Array)


__all__ = ["available", "crop_plan", "is_global", "require", "train_batches"]
