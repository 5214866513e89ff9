r"""The input pipeline against the reference loop, on the same encoded images in the same run.

    python -m dcjax.bench.pipeline [--sources=imagenet-like,imagenet-like-256,imagenette-128,cifar10]
        [--images=768] [--workers=1,2] [--repeats=3] [--json=PATH]

For each source, images/s of:
  * view `train`: DeepCluster's training view (RandomResizedCrop area 0.08-1, log-uniform aspect
    3/4-4/3, flip) through dcjax's loader (`pipeline.train_batches`, grain, `workers` threads,
    batches of 64) with `decoder='opencv'`, `'fast'` and `'pil'`, against the reference loop: one
    image at a time in one thread, PIL decode + convert('RGB'), crop then bilinear resize (what
    torchvision's RandomResizedCrop does to a PIL image), flip, then ToTensor + Normalize (float32,
    CHW), as the official code's DataLoader transforms do;
  * view `train` with loader `dali` (`config.data.loader='dali'`, when NVIDIA DALI is installed):
    the same boxes and flips decoded, resized and flipped by DALI (its CPU operators on a host
    without a GPU);
  * view `extract`: the deterministic view (resize shorter side + centre crop) of every image once
    (`pipeline.ordered_batches`) put on the devices, against the same reference loop with
    Resize + CenterCrop; and `extract-cache`: the same batches read back from the view cache
    (`dcjax.view_cache`, 'host' and 'device'), against the decoding pass (`extract`) of the same
    run and worker count.
The loader moves uint8 and normalises on the device, the reference normalises on the host: each
side does what its training loop needs before the network.

`images_per_sec_per_core` divides by the worker threads (the reference uses one core);
`vs_reference` is per-core images/s over the reference's per-core images/s. All images are encoded
bytes in memory (no disk reads on either side). A shared machine's speed drifts by up to 2x within
minutes, so each training-view row is measured `--repeats` times, round-robin over the loaders, every
run right after a reference run of its own: `vs_reference` is the median of those paired ratios
(`vs_reference_range` their range), and `vs_one_worker` (rows with more workers) the median of
images/s over the same repeat's one-worker run: the scaling from 1 to N cores. Each of these
measurements is one pass of `--epoch_images` (4,096: the source's images in shuffled passes, as
DeepCluster's sampler repeats images to fill an epoch, so that starting the loader and its last
batches weigh little), repeated until it has run `--min_seconds` (2 by default); the reference
loop goes over the source once per pass.

Sources, built in memory from the shared data tarballs (../shared/data), the first `--images` files
in sorted order:
  * `imagenet-like`: ImageNet-sized JPEGs, 500 x 375 at quality 90. Each is four different
    Imagenette-128 images tiled 2 x 2 (256 x 256, files 4i .. 4i+3), enlarged bicubically to
    500 x 500 and centre-cropped to 500 x 375; the tiling keeps more detail per pixel than one
    enlarged image (about 47 KB per file against ImageNet's average of about 110 KB: entropy
    decoding, a large share of a JPEG decode, is cheaper here than on ImageNet's photos);
  * `imagenet-like-256`: the same images resized (bicubic) to shorter side 256 (341 x 256),
    quality 90: what a pre-resized ImageNet copy holds;
  * `imagenette-128` (128 x 128, quality 75) and `cifar10` (32 x 32), as they are, at the views
    their configs use (64 px from 73, and 32 px).
"""

from __future__ import annotations

import functools
import io
import json
import os
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("sources", ["imagenet-like", "imagenet-like-256", "imagenette-128", "cifar10"],
                  "Which image sets.")
flags.DEFINE_integer("images", 768, "Images per source.")
flags.DEFINE_list("workers", ["1", "2"], "Loader threads (cores) to measure.")
flags.DEFINE_integer("batch", 64, "Images per loader batch.")
flags.DEFINE_string("shared_data", str(Path(__file__).resolve().parents[3] / "shared" / "data"),
                    "Folder with the shared data tarballs.")
flags.DEFINE_string("json", "", "Write the rows as a JSON list here.")
flags.DEFINE_integer("repeats", 3, "Paired runs of each training-view row (medians reported).")
flags.DEFINE_integer("epoch_images", 4096, "Images per loader pass of the training view (the "
                     "source's images repeated in shuffled passes).")
flags.DEFINE_float("min_seconds", 2.0, "Each training-view measurement repeats its pass over the "
                   "images until at least this long.")

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
# (image_size, resize_size) of each source's views.
VIEWS = {"imagenet-like": (224, 256), "imagenet-like-256": (224, 256), "imagenette-128": (64, 73),
         "cifar10": (32, 32)}
FILES = {"imagenet-like": "500x375 JPEG q90", "imagenet-like-256": "341x256 JPEG q90",
         "imagenette-128": "128x128 JPEG q75", "cifar10": "32x32 JPEG q75"}


def _tar_images(tarball: Path, pattern: str, count: int) -> list[bytes]:
    """The first `count` files (sorted by name) under a folder containing `pattern`."""
    with tarfile.open(tarball, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and pattern in m.name),
                         key=lambda m: m.name)[:count]
        return [tar.extractfile(m).read() for m in members]


def _jpeg(im, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def imagenet_like(tiles: list[bytes], count: int, shorter: int | None = None) -> list[bytes]:
    """`count` 500 x 375 JPEGs (quality 90) from 2 x 2 tiles of 128 px images (module docstring);
    with `shorter`, resized to that shorter side first."""
    from PIL import Image

    out = []
    for i in range(count):
        canvas = Image.new("RGB", (256, 256))
        for j in range(4):
            tile = Image.open(io.BytesIO(tiles[(4 * i + j) % len(tiles)])).convert("RGB")
            canvas.paste(tile.resize((128, 128)), ((j % 2) * 128, (j // 2) * 128))
        big = canvas.resize((500, 500), Image.BICUBIC).crop((0, 62, 500, 437))
        if shorter:
            big = big.resize((round(500 * shorter / 375), shorter), Image.BICUBIC)
        out.append(_jpeg(big, 90))
    return out


def build_source(name: str, count: int) -> list[bytes] | None:
    shared = Path(FLAGS.shared_data)
    if name == "cifar10":
        path = shared / "cifar10-jpg.tar.gz"
        return _tar_images(path, "train/", count) if path.exists() else None
    path = shared / "imagenette-128.tar.gz"
    if not path.exists():
        return None
    if name == "imagenette-128":
        return _tar_images(path, "/train/", count)
    tiles = _tar_images(path, "/train/", 4 * count)
    return imagenet_like(tiles, count, 256 if name == "imagenet-like-256" else None)


# --------------------------------------------------------------------------- the reference loop


def _to_tensor_normalized(im) -> np.ndarray:
    x = np.asarray(im, np.float32) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1).copy()


def _timed(one_pass: Callable[[], int]) -> float:
    """images/s of whole passes (`one_pass` returns its image count) repeated until at least
    --min_seconds have passed: a pass over a few hundred images can take a fraction of a second."""
    count, t = 0, time.perf_counter()
    while True:
        count += one_pass()
        elapsed = time.perf_counter() - t
        if elapsed >= FLAGS.min_seconds:
            return count / elapsed


def reference_train(data: list[bytes], size: int, seed: int = 0) -> float:
    """images/s of the reference's training transforms, one image at a time, one thread."""
    from PIL import Image

    from dcjax.data.pipeline import random_resized_crop_box

    rng = np.random.default_rng(seed)

    def one_pass():
        for d in data:
            im = Image.open(io.BytesIO(d)).convert("RGB")
            w, h = im.size
            top, left, ch, cw = random_resized_crop_box(h, w, rng, (0.08, 1.0), (3 / 4, 4 / 3))
            im = im.crop((left, top, left + cw, top + ch)).resize((size, size), Image.BILINEAR)
            if rng.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            _to_tensor_normalized(im)
        return len(data)

    return _timed(one_pass)


def reference_extract(data: list[bytes], size: int, resize: int) -> float:
    """images/s of Resize(resize) + CenterCrop(size) + ToTensor + Normalize, one thread."""
    from PIL import Image

    t = time.perf_counter()
    for d in data:
        im = Image.open(io.BytesIO(d)).convert("RGB")
        w, h = im.size
        scale = resize / min(w, h)
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        _to_tensor_normalized(im.crop((left, top, left + size, top + size)))
    return len(data) / (time.perf_counter() - t)


# --------------------------------------------------------------------------- dcjax


class _Records:
    """A random-access source over encoded images (what an imported split returns)."""

    def __init__(self, data: list[bytes]):
        self._data = data

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, i: int) -> dict:
        return {"image": self._data[i], "label": 0}


def _epoch_indices(n: int) -> np.ndarray:
    """The training pass's index array: shuffled passes over the n images up to --epoch_images
    (whole batches), as the sampler repeats images to fill an epoch. One long pass, so that the
    loader's start and its last, partly idle batches weigh as little as in a real epoch."""
    rng = np.random.default_rng(0)
    count = max(FLAGS.epoch_images, n) // FLAGS.batch * FLAGS.batch
    reps = -(-count // n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:count]


def loader_train(data, size, resize, workers: int, decoder: str) -> float:
    from dcjax.data import pipeline

    view = pipeline.ViewConfig(image_size=size, resize_size=resize)
    indices = _epoch_indices(len(data))

    def run(idx):
        return sum(len(b["index"]) for b in pipeline.train_batches(
            _Records(data), idx, view, FLAGS.batch, seed=0, num_threads=workers, prefetch=4,
            decoder=decoder))

    run(indices[:FLAGS.batch * workers])  # warm-up: imports, threads, decoders
    return _timed(lambda: run(indices))


def dali_train(data, size, resize, workers: int) -> float:
    """images/s of the DALI training view (`dali_loader`; DALI's CPU operators on CPU devices)."""
    from dcjax.data import dali_loader, pipeline
    from dcjax.sharding import default_mesh

    view = pipeline.ViewConfig(image_size=size, resize_size=resize)
    indices = _epoch_indices(len(data))

    def run(idx):
        return sum(len(b["index"]) for b in dali_loader.train_batches(
            _Records(data), idx, view, FLAGS.batch, seed=0, mesh=default_mesh(),
            num_threads=workers))

    run(indices[:FLAGS.batch])  # warm-up: builds a pipeline
    return _timed(lambda: run(indices))


def loader_extract(data, size, resize, workers: int) -> tuple[float, float, float]:
    """images/s of the decoding pass to the devices, then of reading it back from a host and a
    device view cache (features.extract's input side)."""
    import jax

    from dcjax.data import pipeline
    from dcjax.sharding import default_mesh, rows
    from dcjax.view_cache import ViewCache

    view = pipeline.ViewConfig(image_size=size, resize_size=resize)
    mesh = default_mesh()
    sharding = rows(mesh)
    batch = FLAGS.batch
    nb = -(-len(data) // batch)
    rates = []
    for _ in pipeline.ordered_batches(_Records(data[:batch * workers]), view, batch,
                                      num_threads=workers):  # warm-up
        pass
    for mode in ("host", "device"):
        cache = ViewCache(mode)
        key = cache.key(view, batch, nb, batch, mesh)
        cache.begin(key, (batch, size, size, 3), mesh)
        t = time.perf_counter()
        for b, host_batch in enumerate(pipeline.ordered_batches(
                _Records(data), view, batch, num_threads=workers, prefetch=4)):
            images = jax.make_array_from_process_local_data(sharding, host_batch["image"])
            jax.block_until_ready(images)
            cache.put(b, host_batch, images)
        if not rates:
            rates.append(len(data) / (time.perf_counter() - t))
        cache.finish()
        built = cache.lookup(key)
        t = time.perf_counter()
        for b in range(nb):
            images = built.images[b]
            if not isinstance(images, jax.Array):
                images = jax.make_array_from_process_local_data(sharding, np.asarray(images))
            jax.block_until_ready(images)
        rates.append(len(data) / (time.perf_counter() - t))
    return rates[0], rates[1], rates[2]


def main(argv):
    del argv
    import jax

    from dcjax.bench.common import machine
    from dcjax.data.dali_loader import available as dali_available

    print(f"machine: {machine()}, {os.cpu_count()} cores; jax {jax.__version__}; "
          f"{FLAGS.images} images per source, batches of {FLAGS.batch}")
    rows = []

    def add(source, view, loader, workers, ips, ref_per_core):
        per_core = ips / workers
        rows.append(dict(source=source, files=FILES[source], view=view, loader=loader, workers=workers,
                         images_per_sec=ips, images_per_sec_per_core=per_core,
                         vs_reference=per_core / ref_per_core))

    for name in FLAGS.sources:
        data = build_source(name, FLAGS.images)
        if data is None:
            print(f"{name}: skipped, its tarball is not in {FLAGS.shared_data}")
            continue
        size, resize = VIEWS[name]
        kb = np.mean([len(d) for d in data]) / 1024
        print(f"{name}: {len(data)} images, {kb:.1f} KB per file, view {size} px (resize {resize})")
        reference_train(data[:32], size)  # warm-up
        train = {f"dcjax grain, decoder={d}": functools.partial(loader_train, decoder=d)
                 for d in ("opencv", "fast", "pil")}
        if dali_available():
            train["dali (CPU operators)"] = dali_train
        workers = [int(v) for v in FLAGS.workers]
        # Paired runs: each loader's worker counts right after a reference run, FLAGS.repeats times
        # round-robin, so that a machine whose speed drifts moves both sides of every ratio.
        refs, rates, ratios = [], {}, {}
        for _ in range(FLAGS.repeats):
            for loader, fn in train.items():
                ref = reference_train(data, size)
                refs.append(ref)
                for w in workers:
                    ips = fn(data, size, resize, w)
                    rates.setdefault((loader, w), []).append(ips)
                    ratios.setdefault((loader, w), []).append(ips / w / ref)
        ref = float(np.median(refs))
        add(name, "train", "reference (PIL loop)", 1, ref, ref)
        rows[-1]["vs_reference_range"] = [min(refs) / ref, max(refs) / ref]
        ref_x = reference_extract(data, size, resize)
        add(name, "extract", "reference (PIL loop)", 1, ref_x, ref_x)
        for w in workers:
            for loader in train:
                add(name, "train", loader, w, float(np.median(rates[loader, w])), ref)
                r = ratios[loader, w]
                rows[-1].update(vs_reference=float(np.median(r)), vs_reference_range=[min(r), max(r)])
                one = rates.get((loader, 1))
                if one:  # paired: the same repeat's one-worker run
                    rows[-1]["vs_one_worker"] = float(np.median(
                        [a / b for a, b in zip(rates[loader, w], one)]))
            decoded, host, device = loader_extract(data, size, resize, w)
            add(name, "extract", "dcjax grain", w, decoded, ref_x)
            add(name, "extract-cache", "dcjax view cache (host)", w, host, decoded / w)
            add(name, "extract-cache", "dcjax view cache (device)", w, device, decoded / w)

    print("\n| source | view | loader | workers | images/s | images/s per core | vs reference "
          "| vs 1 worker |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        span = r.get("vs_reference_range")
        span = f" ({span[0]:.2f}-{span[1]:.2f})" if span and r["view"] == "train" else ""
        one = f"{r['vs_one_worker']:.2f}x" if "vs_one_worker" in r else ""
        print(f"| {r['source']} | {r['view']} | {r['loader']} | {r['workers']} | "
              f"{r['images_per_sec']:,.0f} | {r['images_per_sec_per_core']:,.0f} | "
              f"{r['vs_reference']:.2f}x{span} | {one} |")
    print(f"(train rows: medians of {FLAGS.repeats} runs, each paired with a reference run just "
          "before it; in brackets the range of the ratio; the reference row's range is of its "
          "speed, against its median. vs 1 worker: paired images/s against the one-worker run.)")
    print("(extract-cache rows: vs the decoding pass with the same workers)")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    app.run(main)
