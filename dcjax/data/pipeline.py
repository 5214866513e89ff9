"""Input pipelines over random-access sources, with grain.

Two views of a dataset:
  * `ordered_batches`: the deterministic view (resize shorter side + centre crop) of every image
    exactly once, in index order, the last batch padded and masked. Used for feature extraction and
    evaluation.
  * `train_batches`: augmented views (RandomResizedCrop scale 0.08-1, ratio 3/4-4/3, horizontal flip;
    or, with `crop='translate'`, the reference linear probe's: the deterministic view shifted by whole
    pixels)
    of the images at a caller-given index array (DeepCluster's sampler output), in that order.
    Augmentation randomness is a function of (seed, position), so a run resumed mid-epoch
    (`start_batch`) sees exactly the batches an uninterrupted run would have seen.

Both yield numpy dicts: image [b, S, S, 3] uint8, label [b] int32, index [b] int32, mask [b] bool,
where b is this process's share of the global batch (multi-host: each process reads its own rows of
every global batch, so stacking the processes' rows in process order gives the global batch).
Normalisation (`normalize`) runs on the device, so the host moves uint8.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from dcjax.data.images import decode_bytes, jpeg_orientation

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    image_size: int  # side of the square the network sees
    resize_size: int  # deterministic view: shorter side resized to this, then centre crop
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip: bool = True
    # 'resized': RandomResizedCrop (crop_scale, crop_ratio). 'translate': the reference linear probe's
    # training view, the deterministic view's window shifted by whole pixels (crop_scale unused).
    crop: str = "resized"


CROPS = ("resized", "translate")
DECODERS = ("fast", "pil", "opencv")  # the training view's decoding (train_batches)
LOADERS = ("grain", "dali")  # who makes the training view (grain here; dali: data/dali_loader.py)
# The reference probe trains on RandomCrop(224) of the 256 px centre square and tests on its centre
# 224 crop: the test window shifted by up to 16 px each way, 16/224 of the crop's side.
TRANSLATE_FRACTION = 16.0 / 224.0


def translate_crop_box(h: int, w: int, view: ViewConfig,
                       rng: np.random.Generator) -> tuple[float, float, float]:
    """(top, left, side) in source pixels of `center_view`'s window shifted by a uniform whole-pixel
    offset in [-m, m] on each axis of the resized grid, m = round(image_size * 16 / 224).

    With resize_size 256 and image_size 224 this is the reference's Resize(256), CenterCrop(256),
    RandomCrop(224); where resize_size leaves no margin (32 px CIFAR: m = 2) the window may leave the
    image and `train_view` pads it with zeros, as the usual pad-and-crop.
    """
    scale = view.resize_size / min(h, w)  # resized pixels per source pixel
    side = view.image_size / scale
    m = int(round(view.image_size * TRANSLATE_FRACTION))
    dy, dx = (int(v) for v in rng.integers(-m, m + 1, size=2))
    return (h - side) / 2.0 + dy / scale, (w - side) / 2.0 + dx / scale, side


def view_config(config: Any) -> ViewConfig:
    """The view `config.data` describes: the deterministic view's geometry and the (first)
    training view."""
    d = config.data
    return ViewConfig(image_size=d.image_size, resize_size=d.resize_size,
                      crop_scale=tuple(d.crop_scale), flip=d.flip)


def view_configs(config: Any) -> tuple[ViewConfig, ...]:
    """The training views of each record, in order: config.data.views, a tuple of
    (count, image_size, (min_scale, max_scale)) groups (multi-crop: two 224 px views of 14-100% of
    the image and six 96 px views of 5-14% are ((2, 224, (0.14, 1.0)), (6, 96, (0.05, 0.14)))),
    or, when it is empty, the one view of `view_config`."""
    base = view_config(config)
    groups = tuple(config.data.get("views", ()) or ())
    if not groups:
        return (base,)
    return tuple(dataclasses.replace(base, image_size=int(size), crop_scale=tuple(scale))
                 for count, size, scale in groups for _ in range(int(count)))


def view_seed(seed32: int, position: int, view_index: int) -> list[int]:
    """The random stream of view `view_index` of the image at `position` of the epoch: the first
    view's is [seed, position] (as single-view runs always drew it), the others' [seed, position,
    view_index]."""
    return [seed32, position] if view_index == 0 else [seed32, position, view_index]


def check_views(config: Any) -> None:
    """config.data.views' groups; ConfigError naming the bad one."""
    from dcjax.config_lib import require

    for group in tuple(config.data.get("views", ()) or ()):
        ok = (isinstance(group, (tuple, list)) and len(group) == 3
              and isinstance(group[0], int) and group[0] >= 1
              and isinstance(group[1], int) and group[1] >= 1
              and isinstance(group[2], (tuple, list)) and len(group[2]) == 2
              and 0.0 < group[2][0] <= group[2][1] <= 1.0)
        require(ok, f"config.data.views: {tuple(group) if isinstance(group, list) else group!r} "
                    f"must be (count >= 1, image_size >= 1, (min_scale, max_scale)) with "
                    f"0 < min_scale <= max_scale <= 1")


def loader_options(config: Any) -> dict:
    """This process's share of the data and the loader settings of `config.data`."""
    import jax

    d = config.data
    return dict(process_index=jax.process_index(), process_count=jax.process_count(),
                num_threads=d.num_threads, prefetch=d.prefetch, num_workers=d.num_workers)


def decode_image(value: Any) -> np.ndarray:
    """Encoded bytes (JPEG/PNG) or an array -> [H, W, 3] uint8 RGB."""
    if isinstance(value, (bytes, np.bytes_)):
        return decode_bytes(value)
    array = np.asarray(value, dtype=np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array


def _resize(image: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float]):
    """Crops `box` (left, top, right, bottom) and resizes it to `size` (w, h), bilinear."""
    from PIL import Image

    out = Image.fromarray(image).resize(size, Image.BILINEAR, box=box)
    return np.asarray(out)


MAX_WARP_SHRINK = 1.5  # `_warp` hands larger shrinks to Pillow; `_scale_for` avoids them


@functools.cache
def _opencv():
    """OpenCV, single-threaded: the loader's threads (or processes) already use every core."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


def _warp(image: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float]):
    """`_resize` by OpenCV: bilinear interpolation at each output pixel's centre, mapped into `box`
    exactly (fractional boxes too: a warp; whole-pixel boxes that shrink: a resize of the crop),
    edge pixels replicated. Pillow widens its filter as a box
    shrinks and OpenCV's bilinear does not, so the two drift apart with the shrink (a mean of
    0.2 grey levels at 1x, 0.9 at 1.5x, 1.7 at 2x on photos); crops that shrink by more than
    MAX_WARP_SHRINK on either axis go through Pillow (tests/test_data.py)."""
    left, top, right, bottom = box
    sx, sy = (right - left) / size[0], (bottom - top) / size[1]
    if max(sx, sy) > MAX_WARP_SHRINK:
        return _resize(image, size, box)
    cv2 = _opencv()
    if min(sx, sy) >= 1.0 and all(float(v).is_integer() for v in box):
        # A whole-pixel box that shrinks: every sample lies inside it, so resizing the crop is the
        # same map (OpenCV's resize, twice as fast as the warp and with exact weights where the
        # warp places samples to 1/32 pixel: 0.16 grey levels apart on photos, as close to Pillow).
        left, top, right, bottom = (int(v) for v in box)
        return cv2.resize(image[top:bottom, left:right], size, interpolation=cv2.INTER_LINEAR)
    m = np.array([[sx, 0.0, left + 0.5 * sx - 0.5], [0.0, sy, top + 0.5 * sy - 0.5]])
    return cv2.warpAffine(np.ascontiguousarray(image), m, size,
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def center_view(image: np.ndarray, view: ViewConfig) -> np.ndarray:
    """Resize the shorter side to `resize_size`, centre crop `image_size`: [S, S, 3] uint8."""
    h, w = image.shape[:2]
    scale = view.resize_size / min(h, w)
    crop = view.image_size / scale  # the crop's side in source pixels
    left, top = (w - crop) / 2.0, (h - crop) / 2.0
    return _resize(image, (view.image_size, view.image_size), (left, top, left + crop, top + crop))


def ten_crop_views(image: np.ndarray, view: ViewConfig) -> np.ndarray:
    """The reference probe's test views: the shorter side resized to `resize_size`, then the four
    corner and the centre `image_size` crops of the whole resized image (not of its centre square),
    and their mirror images: [10, S, S, 3] uint8, the centre crop (= `center_view`) fifth."""
    h, w = image.shape[:2]
    scale = view.resize_size / min(h, w)
    crop = view.image_size / scale  # the crop's side in source pixels
    right, bottom = w - crop, h - crop
    corners = ((0.0, 0.0), (right, 0.0), (0.0, bottom), (right, bottom), (right / 2, bottom / 2))
    size = (view.image_size, view.image_size)
    crops = np.stack([_resize(image, size, (x, y, x + crop, y + crop)) for x, y in corners])
    return np.concatenate([crops, crops[:, :, ::-1]])


def random_resized_crop_box(h: int, w: int, rng: np.random.Generator,
                            scale: Sequence[float], ratio: Sequence[float]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop with area fraction in `scale` and aspect in `ratio`.

    Ten tries at a random area and log-uniform aspect; if none fits, the largest centre crop whose
    aspect lies in `ratio` (the usual RandomResizedCrop rule).
    """
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            return top, left, ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


@dataclasses.dataclass(frozen=True)
class Draw:
    """One augmented view's random choices, in source pixels: the crop box (top, left, height,
    width; for 'translate' crops a square window that may leave the image) and the flip."""

    top: float
    left: float
    height: float
    width: float
    flip: bool


def draw_view(h: int, w: int, view: ViewConfig, rng: np.random.Generator) -> Draw:
    """The crop box and the flip of one augmented view of an h x w image, drawn once from `rng`
    (box first, then flip). Every path that makes the training view (train_view on a full decode,
    fast_train_view and region_train_view on partial JPEG decodes, the DALI loader) takes its
    box and flip from here, so all crop the same boxes and flip the same images."""
    if view.crop == "translate":
        top, left, side = translate_crop_box(h, w, view, rng)
        box = (top, left, side, side)
    elif view.crop == "resized":
        box = random_resized_crop_box(h, w, rng, view.crop_scale, view.crop_ratio)
    else:
        raise ValueError(f"view crop {view.crop!r} must be one of {CROPS}")
    return Draw(*box, flip=bool(view.flip and rng.random() < 0.5))


Resampler = Callable[[np.ndarray, tuple[int, int], tuple[float, float, float, float]], np.ndarray]


def train_view(image: np.ndarray, view: ViewConfig, rng: np.random.Generator,
               resize: Resampler = _resize) -> np.ndarray:
    """A random crop (`view.crop`) resized to `image_size` (by `resize`: Pillow's bilinear, or
    `_warp`) and a random horizontal flip: [S, S, 3] uint8."""
    h, w = image.shape[:2]
    size = (view.image_size, view.image_size)
    d = draw_view(h, w, view, rng)
    top, left, ch, cw = d.top, d.left, d.height, d.width
    pad = int(math.ceil(max(0.0, -top, -left, top + ch - h, left + cw - w)))  # translate only
    if pad:
        image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    out = resize(image, size, (left + pad, top + pad, left + pad + cw, top + pad + ch))
    if d.flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _power_of_two_scale(h: int, w: int, need_h: float, need_w: float) -> int:
    """The largest f in (1, 2, 4, 8) whose 1/f JPEG DCT scaling leaves at least need_h x need_w."""
    f = 1
    while f < 8 and -(-h // (2 * f)) >= need_h and -(-w // (2 * f)) >= need_w:
        f *= 2
    return f


def fast_train_view(value: Any, view: ViewConfig, rng: np.random.Generator,
                    resize: Resampler = _resize) -> np.ndarray:
    """`train_view(decode_image(value), view, rng)` for encoded images, decoding no more of a JPEG
    than the crop needs: the crop box is drawn from the header's size, then the JPEG is decoded
    at the smallest power-of-two DCT scale (1/2, 1/4, 1/8) that still gives the crop at least
    `image_size` pixels on each side, and the crop is resized once from there. Same boxes and
    flips as `train_view` for the same `rng`; at scale 1 the same pixels, bit for bit (libjpeg-turbo
    decodes as Pillow does); at a smaller scale the pixels differ by resampling only
    (tests/test_data.py). Anything else (PNG, arrays, translate crops, EXIF-rotated or CMYK JPEGs)
    goes through `train_view`. `resize` resamples the crop (Pillow's bilinear, or `_warp`)."""
    import simplejpeg

    if (view.crop != "resized" or not isinstance(value, (bytes, np.bytes_))
            or jpeg_orientation(value) != 1):
        return train_view(decode_image(value), view, rng, resize)
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(value)
    except ValueError:
        return train_view(decode_image(value), view, rng, resize)
    if colorspace not in ("YCbCr", "Gray"):
        return train_view(decode_image(value), view, rng, resize)
    size = view.image_size
    d = draw_view(h, w, view, rng)
    top, left, ch, cw = d.top, d.left, d.height, d.width
    f = _power_of_two_scale(h, w, h * size / ch, w * size / cw)
    image = simplejpeg.decode_jpeg(value, colorspace="RGB", min_height=-(-h // f),
                                   min_width=-(-w // f))
    out = resize(image, (size, size), (left / f, top / f, (left + cw) / f, (top + ch) / f))
    if d.flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _scale_for(h: int, w: int, ch: int, cw: int, size: int) -> tuple[int, int]:
    """The DCT scale (num, den) `region_train_view` decodes a ch x cw crop at: the power-of-two
    scale `fast_train_view` uses, unless the crop would still shrink by more than MAX_WARP_SHRINK
    from there; then the smallest num/8 that leaves the crop at least `size` pixels on each side
    (so it shrinks by at most 8/7..3/2 more: libjpeg's scaled inverse DCT does the rest of the
    shrink, an antialiased one)."""
    f = _power_of_two_scale(h, w, h * size / ch, w * size / cw)
    if max(ch, cw) / f <= MAX_WARP_SHRINK * size:
        return 1, f
    return min(8, -(-8 * size // min(ch, cw))), 8


def region_train_view(value: Any, view: ViewConfig, rng: np.random.Generator) -> np.ndarray:
    """decoder='opencv': `fast_train_view(value, view, rng, _warp)` decoding only the crop's rows
    and columns (`jpeg_region.decode_region`), at the scale `_scale_for` picks, then resampled by
    `_warp`. Same boxes and flips as `train_view` for the same `rng`; where `_scale_for` keeps the
    power-of-two scale, the same pixels as `fast_train_view` with `_warp`, bit for bit; crops that
    would shrink by more than MAX_WARP_SHRINK are scaled by the DCT instead of Pillow (closer to
    Pillow than the warp alone: tests/test_jpeg_region.py). Anything the C decoder does not read
    (no compiler on this host, PNG, CMYK, EXIF-rotated) goes through `fast_train_view`."""
    from dcjax.data import jpeg_region

    if (view.crop != "resized" or not isinstance(value, (bytes, np.bytes_))
            or jpeg_region.library() is None or jpeg_orientation(value) != 1):
        return fast_train_view(value, view, rng, _warp)
    head = jpeg_region.header(value)
    if head is None or head[2] not in (jpeg_region.GRAYSCALE, jpeg_region.YCBCR):
        return fast_train_view(value, view, rng, _warp)
    w, h, _ = head
    size = view.image_size
    d = draw_view(h, w, view, rng)
    top, left, ch, cw = d.top, d.left, d.height, d.width
    num, den = _scale_for(h, w, ch, cw, size)
    sw, sh = jpeg_region.scaled_size(w, h, num, den)
    s = num / den
    box = (left * s, top * s, (left + cw) * s, (top + ch) * s)
    # Margin for the resampling filter: 2 pixels for the warp, Pillow's support where _warp hands
    # a large shrink to Pillow.
    margin = 2 + int(math.ceil(max(box[2] - box[0], box[3] - box[1]) / size))
    x0, y0 = max(0, int(box[0]) - margin), max(0, int(box[1]) - margin)
    x1, y1 = min(sw, int(math.ceil(box[2])) + margin), min(sh, int(math.ceil(box[3])) + margin)
    decoded = jpeg_region.decode_region(value, num, den, x0, y0, x1, y1, sw)
    if decoded is None:  # the header said YCbCr or greyscale: not reached
        out = _warp(decode_image(value), (size, size), (left, top, left + cw, top + ch))
    else:
        x, y, pixels = decoded
        out = _warp(pixels, (size, size), (box[0] - x, box[1] - y, box[2] - x, box[3] - y))
    if d.flip:
        out = _opencv().flip(out, 1)  # = out[:, ::-1], 40x faster than numpy's strided copy
    return np.ascontiguousarray(out)


def normalize(images):
    """[B, H, W, 3] uint8 -> float32, ImageNet mean/std normalised (the reference's input)."""
    import jax.numpy as jnp

    x = images.astype(jnp.float32) / 255.0
    return (x - IMAGENET_MEAN) / IMAGENET_STD


# --------------------------------------------------------------------------- index bookkeeping


def host_rows(indices: np.ndarray, global_batch: int, process_index: int,
              process_count: int) -> np.ndarray:
    """This process's rows of every global batch: [num_batches * global_batch / P] of `indices`.

    `len(indices)` must be a multiple of `global_batch`, itself a multiple of `process_count`.
    """
    if global_batch % process_count:
        raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
    per_host = global_batch // process_count
    rows = np.asarray(indices).reshape(-1, process_count, per_host)
    return rows[:, process_index].reshape(-1)


class _BatchSource:
    """Random-access source of whole host batches: batch b = records `indices[b]`, transformed.

    A batch, not an image, is grain's unit of work: one read call per batch (ArrayRecord batch
    reads), and threads parallelise over batches, which keeps per-image overhead low on small
    images. `transform(stored image, position)` gets the stored value (encoded bytes or an
    array), so it may decode only what it needs. `indices` [num_batches, b] (-1 = padding, read
    as record 0, mask False); `positions`
    are the images' places in the global (all-process) order, from which augmentation seeds come,
    so the views do not depend on how many processes share the work.
    """

    def __init__(self, source: Any, indices: np.ndarray, positions: np.ndarray,
                 transform: Callable[[np.ndarray, int], np.ndarray]):
        self._source = source
        self._indices = np.asarray(indices, dtype=np.int64)
        self._positions = np.asarray(positions, dtype=np.int64)
        self._transform = transform

    def __len__(self) -> int:
        return len(self._indices)

    def _read(self, keys: list[int]) -> list[dict[str, Any]]:
        if hasattr(self._source, "__getitems__"):
            return list(self._source.__getitems__(keys))
        return [self._source[key] for key in keys]

    def __getitem__(self, b: int) -> Batch:
        index = self._indices[b]
        records = self._read([int(i) for i in np.maximum(index, 0)])
        images = None
        for i, (r, p) in enumerate(zip(records, self._positions[b])):
            views = self._transform(r["image"], int(p))
            if not isinstance(views, tuple):
                views = (views,)
            if images is None:  # one buffer per batch and view, each image written into its slot
                images = tuple(np.empty((len(records), *v.shape), v.dtype) for v in views)
            for buffer, v in zip(images, views):
                buffer[i] = v
        return {"image": images[0] if len(images) == 1 else images,
                "label": np.array([int(r.get("label", -1)) for r in records], np.int32),
                "index": index.astype(np.int32),
                "mask": index >= 0}


def _iterate(ds, num_threads: int, prefetch: int, num_workers: int) -> Iterator[Batch]:
    import grain

    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=max(num_threads, 1),
                                              prefetch_buffer_size=max(prefetch, 1)))
    if num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's worker options are absl flags
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(it)


def _host_batches(indices: np.ndarray, global_batch: int, process_index: int,
                  process_count: int) -> tuple[np.ndarray, np.ndarray]:
    """This process's rows of every global batch of `indices`, and their global positions:
    two [num_batches, global_batch / process_count] arrays."""
    per_host = global_batch // process_count
    rows = host_rows(indices, global_batch, process_index, process_count)
    positions = host_rows(np.arange(len(indices)), global_batch, process_index, process_count)
    return rows.reshape(-1, per_host), positions.reshape(-1, per_host)


def ordered_batches(source: Any, view: ViewConfig, global_batch: int, *, process_index: int = 0,
                    process_count: int = 1, num_threads: int = 2, prefetch: int = 4,
                    num_workers: int = 0, ten_crop: bool = False) -> Iterator[Batch]:
    """Every record once, in order, deterministic view; last batch padded (mask False, index -1).
    `ten_crop`: each image's `ten_crop_views` instead, images [B, 10, S, S, 3]."""
    import grain

    n = len(source)
    padded = np.full(math.ceil(n / global_batch) * global_batch, -1, dtype=np.int64)
    padded[:n] = np.arange(n)
    rows, positions = _host_batches(padded, global_batch, process_index, process_count)
    views = ten_crop_views if ten_crop else center_view
    batches = _BatchSource(source, rows, positions,
                           lambda value, position: views(decode_image(value), view))
    return _iterate(grain.MapDataset.source(batches), num_threads, prefetch, num_workers)


def num_train_batches(num_indices: int, global_batch: int) -> int:
    return num_indices // global_batch


def train_batches(source: Any, indices: np.ndarray, view: ViewConfig | Sequence[ViewConfig],
                  global_batch: int, *, seed: int, start_batch: int = 0, process_index: int = 0,
                  process_count: int = 1, num_threads: int = 2, prefetch: int = 4,
                  num_workers: int = 0, decoder: str = "fast") -> Iterator[Batch]:
    """Augmented views of `source[indices]` in the given order, full batches only.

    Batches `start_batch`, `start_batch + 1`, ... of the epoch; image randomness depends only on
    (`seed`, position in `indices`, view index: `view_seed`). With a sequence of views
    (`view_configs`, multi-crop) each batch's image is a tuple, one [b, S_i, S_i, 3] array per view;
    with one view, the array. `decoder`: 'fast' (`fast_train_view`: JPEGs decoded at the resolution
    the crop needs), 'opencv' (`region_train_view`: only the crop's rows and columns decoded,
    resampled by OpenCV) or 'pil' (`train_view` on the full decode); same crops and flips.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder {decoder!r} must be one of {DECODERS}")
    import grain

    nb = num_train_batches(len(indices), global_batch)
    rows, positions = _host_batches(np.asarray(indices)[: nb * global_batch], global_batch,
                                    process_index, process_count)
    seed32 = int(seed) & 0xFFFFFFFF

    views = (view,) if isinstance(view, ViewConfig) else tuple(view)
    decoded = decoder == "pil" and len(views) > 1  # decode once for all views

    def one(value: Any, v: ViewConfig, rng: np.random.Generator) -> np.ndarray:
        if decoder == "fast":
            return fast_train_view(value, v, rng)
        if decoder == "opencv":
            return region_train_view(value, v, rng)
        return train_view(value if decoded else decode_image(value), v, rng)

    def augment(value: Any, position: int) -> np.ndarray | tuple[np.ndarray, ...]:
        if decoded:
            value = decode_image(value)
        out = tuple(one(value, v, np.random.default_rng(view_seed(seed32, position, i)))
                    for i, v in enumerate(views))
        return out[0] if len(out) == 1 else out

    batches = _BatchSource(source, rows, positions, augment)
    ds = grain.MapDataset.source(batches)[start_batch:]
    return _iterate(ds, num_threads, prefetch, num_workers)
