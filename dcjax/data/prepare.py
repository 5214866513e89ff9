"""Import images into a TFDS dataset stored as ArrayRecord (random access by index).

    python -m dcjax.data.prepare --source=SOURCE --name=NAME [--data_dir=DIR] [--overwrite]
        [--resize_shorter=256] [--layout=auto|flat|split_class|class] [--holdout=F] [--seed=0]

SOURCE is one of:
  * a folder of images at any depth, read as `--layout` says (see "folder layouts" below): by
    default as labelled splits when it is laid out `split/class/image` (train/, val/, test/, ...;
    any number of leading folders above the splits), otherwise as one unlabeled `train` split of
    every image under it, each identified by its path relative to the folder;
  * a `.tar`, `.tar.gz` or `.tgz` of such a folder (read as a stream, never unpacked to disk);
  * a folder of IDX files (MNIST / Fashion-MNIST layout: `train-images-idx3-ubyte[.gz]`,
    `train-labels-idx1-ubyte[.gz]`, `t10k-...` for the test split);
  * an `.npz` file with arrays `x_<split>` ([N, H, W] or [N, H, W, C] uint8) and `y_<split>` ([N] int);
  * `digits`: scikit-learn's bundled 8x8 digits, the embedded default (prepared automatically on
    first use);
  * a folder with the official ILSVRC-2012 tarballs `ILSVRC2012_img_train.tar` (one tar per class
    inside) and optionally `ILSVRC2012_img_val.tar` with its labels (`LOC_val_solution.csv`, or
    `validation_labels.txt`: one wnid per line in sorted file-name order): splits `train` and
    `validation`, classes = the 1,000 wnids in sorted order.

`--resize_shorter=256` stores a resized copy (shorter side 256, JPEG quality 90) so that training
decodes small JPEGs instead of full-size ones.

Every example holds the encoded image (the original JPEG/PNG bytes when the file is one, PNG
otherwise), its label, and an `id` (the source path or array index), so nothing depends on the
order TFDS gives the records. Every file is fully decoded once while importing: those that fail
(and those the layout cannot place) are skipped and listed with the reason in the printed report
(and in `import_report.json` beside the data); files that are not images by name are counted by
extension on one line. `--holdout=F` moves a seeded fraction F of `train` into `validation`.
Writing needs neither TensorFlow nor a network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import struct
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from dcjax.data.datasets import (
    DATASET_VERSION,
    EMBEDDED,
    REPORT_FILE,
    DataError,
    dataset_dir,
    resolve_data_dir,
)
from dcjax.data.images import decode_error, needs_conversion, to_rgb8

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_SPLIT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_KEEP_FORMATS = {"JPEG", "PNG"}
UNLABELED = "(unlabeled)"  # the count key of images without a label


@dataclasses.dataclass
class ImportReport:
    """What an import wrote, what it could not read, and what it left aside as not images."""

    name: str
    path: str = ""
    source: str = ""
    layout: str = ""
    class_names: list[str] = dataclasses.field(default_factory=list)
    counts: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # split -> class -> n
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (file, reason)
    ignored: dict[str, int] = dataclasses.field(default_factory=dict)  # extension -> files
    # (file, the earlier file it is byte-identical to): imported all the same, listed
    duplicates: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def count(self, split: str, label: str | None) -> None:
        per_class = self.counts.setdefault(split, {})
        key = UNLABELED if label is None else label
        per_class[key] = per_class.get(key, 0) + 1

    def ignore(self, kind: str) -> None:
        self.ignored[kind] = self.ignored.get(kind, 0) + 1

    def total(self, split: str | None = None) -> int:
        splits = [split] if split else list(self.counts)
        return sum(sum(self.counts.get(s, {}).values()) for s in splits)

    def format(self) -> str:
        lines = [f"dataset {self.name!r} from {self.source}"
                 + (f" (layout {self.layout})" if self.layout else ""), f"  written to {self.path}"]
        for split in sorted(self.counts):
            per_class = self.counts[split]
            if set(per_class) == {UNLABELED}:
                lines.append(f"  {split}: {self.total(split)} images, unlabeled")
                continue
            lines.append(f"  {split}: {self.total(split)} images in {len(per_class)} classes")
            for label in self.class_names:
                if label in per_class:
                    lines.append(f"    {label:<24s} {per_class[label]}")
        lines.append(f"  skipped: {len(self.skipped)} file(s) that could not be imported")
        for path, reason in self.skipped:
            lines.append(f"    {path}: {reason}")
        if self.duplicates:
            lines.append(f"  duplicates: {len(self.duplicates)} file(s) byte-identical to another "
                         f"(imported all the same; all listed in {REPORT_FILE})")
            for path, first in self.duplicates[:10]:
                lines.append(f"    {path} = {first}")
            if len(self.duplicates) > 10:
                lines.append(f"    ... and {len(self.duplicates) - 10} more")
        if self.ignored:
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.ignored.items()))
            lines.append(f"  ignored: {sum(self.ignored.values())} file(s) that are not images by "
                         f"name ({kinds})")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- image checks


def checked_image_bytes(data: bytes, resize_shorter: int = 0) -> bytes:
    """Fully decodes `data`; returns bytes that decode to the image as it is meant to be seen, in
    8-bit RGB (dcjax.data.images.to_rgb8). Raises on failure.

    JPEG and PNG files are kept as they are unless they need converting: a 16-bit or float image
    is stored as 8-bit PNG, a photo with an EXIF rotation is stored upright (JPEG quality 95 for a
    JPEG, else PNG); other formats become PNG. With `resize_shorter` > 0, an image whose shorter
    side is longer than that is resized (bicubic) to that shorter side and stored as JPEG
    (quality 90): a smaller copy that decodes faster.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        w, h = im.size
        if resize_shorter and min(w, h) > resize_shorter:
            rgb = Image.fromarray(to_rgb8(im))
            scale = resize_shorter / min(rgb.size)
            size = (max(1, round(rgb.size[0] * scale)), max(1, round(rgb.size[1] * scale)))
            return _encode_jpeg(rgb.resize(size, Image.BICUBIC), quality=90)
        if im.format in _KEEP_FORMATS and not needs_conversion(im):
            return data
        if im.format == "JPEG":
            return _encode_jpeg(Image.fromarray(to_rgb8(im)), quality=95)
        return encode_png(to_rgb8(im))


def _encode_jpeg(im, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png(array: np.ndarray) -> bytes:
    """[H, W] or [H, W, C] uint8 -> PNG bytes."""
    from PIL import Image

    if array.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- sources
# A source is (class_names, {split: callable returning an iterator of (id, label_name, raw bytes)}).
# Raw bytes are checked (and counted or skipped) by the writer, so every source gets the same report.

RawExample = tuple[str, str | None, bytes]  # (id, label name or None for unlabeled, bytes)
Source = tuple[list[str], dict[str, Callable[[], Iterator[RawExample]]]]


# --------------------------------------------------------------------------- folder layouts
# A folder or tarball of images is read one of four ways (`--layout`):
#   split_class  SPLIT/CLASS/IMAGE (any number of leading folders above the splits): labelled splits;
#   class        CLASS/.../IMAGE: one labelled 'train' split, the class is the top folder;
#   flat         every image at any depth: one unlabeled 'train' split (label -1);
#   auto         split_class when every image sits at the same depth under a split-named folder
#                (train, val, test, ...), otherwise flat.
# The id of an image is its path relative to the folder (its member name in a tarball).

LAYOUTS = ("auto", "flat", "split_class", "class")
SPLIT_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test", "testing",
                         "eval", "evaluation", "dev", "holdout"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif",
                            ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico",
                            ".heic", ".heif", ".avif", ".jp2"})
HOLDOUT_SPLIT = "validation"


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


@dataclasses.dataclass
class Plan:
    """Which split and label (None: unlabeled) each image file gets."""

    layout: str
    class_names: list[str]
    splits: dict[str, dict[str, str | None]]  # split -> {id: label name or None}


def _hidden(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") for p in parts)


def triage(names: list[str], report: ImportReport) -> list[str]:
    """The names of image files (by extension, none hidden), sorted; the others are counted in
    `report.ignored` by extension ('hidden' for hidden files and folders)."""
    images = []
    for name in names:
        parts = Path(name).parts
        if _hidden(parts):
            report.ignore("hidden")
        elif not is_image_name(name):
            report.ignore(Path(name).suffix.lower() or "no extension")
        else:
            images.append(name)
    return sorted(images)


def looks_split_class(images: list[str]) -> bool:
    """Every image at one depth >= 3 below the same leading folders, under a split-named folder."""
    if not images:
        return False
    parts = [Path(n).parts for n in images]
    depth = len(parts[0])
    if depth < 3 or any(len(p) != depth for p in parts):
        return False
    lead = {p[: depth - 3] for p in parts}
    return len(lead) == 1 and all(p[depth - 3].lower() in SPLIT_NAMES for p in parts)


def _common_top(images: list[str]) -> int:
    """1 when every image sits under one top folder (a tarball's root folder), else 0."""
    tops = {Path(n).parts[0] for n in images}
    return int(len(tops) == 1 and all(len(Path(n).parts) > 2 for n in images))


def plan_layout(images: list[str], layout: str, report: ImportReport,
                strip_top: bool = False) -> Plan:
    """Splits and labels of `images` (relative paths) under `layout`; images the layout cannot
    place are listed in `report.skipped` with the reason."""
    if layout not in LAYOUTS:
        raise DataError(f"--layout={layout!r} must be one of {LAYOUTS}")
    if layout == "auto":
        layout = "split_class" if looks_split_class(images) else "flat"
    splits: dict[str, dict[str, str | None]] = {}
    classes: set[str] = set()
    skip = _common_top(images) if strip_top else 0
    for name in images:
        parts = Path(name).parts
        if layout == "flat":
            split, label = "train", None
        elif layout == "split_class":
            if len(parts) < 3:
                report.skipped.append((name, "not under split/class/ (--layout=split_class)"))
                continue
            split, label = parts[-3], parts[-2]
        else:  # class
            if len(parts) < 2 + skip:
                report.skipped.append((name, "not inside a class folder (--layout=class)"))
                continue
            split, label = "train", parts[skip]
        splits.setdefault(split, {})[name] = label
        if label is not None:
            classes.add(label)
    return Plan(layout, sorted(classes), {s: splits[s] for s in sorted(splits)})


def hold_out(plan: Plan, fraction: float, seed: int) -> None:
    """Moves round(fraction * n) seeded-random images of 'train' into the 'validation' split."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"--holdout={fraction} must be in (0, 1)")
    if HOLDOUT_SPLIT in plan.splits or "train" not in plan.splits:
        raise DataError(f"--holdout needs a 'train' split and no {HOLDOUT_SPLIT!r} split; "
                        f"the source has {sorted(plan.splits)}")
    train = plan.splits["train"]
    ids = sorted(train)
    count = round(fraction * len(ids))
    if not 0 < count < len(ids):
        raise DataError(f"--holdout={fraction} of {len(ids)} images leaves an empty split")
    chosen = set(np.random.default_rng(seed).choice(len(ids), count, replace=False).tolist())
    plan.splits[HOLDOUT_SPLIT] = {ids[i]: train[ids[i]] for i in sorted(chosen)}
    plan.splits["train"] = {ids[i]: train[ids[i]] for i in range(len(ids)) if i not in chosen}


def folder_source(root: Path, report: ImportReport, layout: str = "auto", holdout: float = 0.0,
                  seed: int = 0) -> Source:
    names = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    plan = _plan(triage(names, report), layout, report, holdout, seed, strip_top=False)

    def split_iter(split: str) -> Iterator[RawExample]:
        for name, label in plan.splits[split].items():
            yield name, label, (root / name).read_bytes()

    return plan.class_names, {s: (lambda s=s: split_iter(s)) for s in plan.splits}


def tar_source(path: Path, report: ImportReport, layout: str = "auto", holdout: float = 0.0,
               seed: int = 0) -> Source:
    try:
        with tarfile.open(path) as tar:
            names = [m.name for m in tar.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read the archive {path}: {e}") from e
    plan = _plan(triage(names, report), layout, report, holdout, seed, strip_top=True)

    def split_iter(split: str) -> Iterator[RawExample]:
        # One streaming pass per split, in archive order (seeking back in a .gz stream would
        # decompress it again from the start for every member).
        wanted = plan.splits[split]
        with tarfile.open(path, "r|*") as tar:
            for m in tar:
                if m.isfile() and m.name in wanted:
                    f = tar.extractfile(m)
                    yield m.name, wanted[m.name], f.read() if f is not None else b""

    return plan.class_names, {s: (lambda s=s: split_iter(s)) for s in plan.splits}


def _plan(images: list[str], layout: str, report: ImportReport, holdout: float, seed: int,
          strip_top: bool) -> Plan:
    plan = plan_layout(images, layout, report, strip_top)
    if holdout:
        hold_out(plan, holdout, seed)
    report.layout = plan.layout
    return plan


IMAGENET_TRAIN_TAR = "ILSVRC2012_img_train.tar"
IMAGENET_VAL_TAR = "ILSVRC2012_img_val.tar"
IMAGENET_VAL_LABELS = ("LOC_val_solution.csv", "validation_labels.txt")


def imagenet_val_labels(root: Path, val_names: list[str]) -> dict[str, str]:
    """Validation file name -> wnid, from LOC_val_solution.csv (ImageId,PredictionString as on
    Kaggle) or validation_labels.txt (one wnid per line, in sorted file-name order, as TFDS ships)."""
    csv_path, txt_path = (root / n for n in IMAGENET_VAL_LABELS)
    if csv_path.exists():
        labels = {}
        for line in csv_path.read_text().splitlines()[1:]:
            image_id, _, prediction = line.partition(",")
            if prediction.strip():
                labels[f"{image_id.strip()}.JPEG"] = prediction.split()[0]
        return labels
    if txt_path.exists():
        wnids = [w.strip() for w in txt_path.read_text().splitlines() if w.strip()]
        names = sorted(val_names)
        if len(wnids) != len(names):
            raise DataError(f"{txt_path} has {len(wnids)} labels for {len(names)} validation images")
        return dict(zip(names, wnids))
    raise DataError(f"{root} has {IMAGENET_VAL_TAR} but no labels for it: put "
                    f"{' or '.join(IMAGENET_VAL_LABELS)} beside it")


def imagenet_source(root: Path, report: ImportReport) -> Source:
    """The official ILSVRC-2012 tarballs: the train tar holds one tar per class (n01440764.tar,
    ...), the val tar 50,000 JPEGs whose labels come from a labels file (imagenet_val_labels).
    Both are streamed; nothing is unpacked to disk."""
    train_tar, val_tar = root / IMAGENET_TRAIN_TAR, root / IMAGENET_VAL_TAR
    try:
        with tarfile.open(train_tar) as tar:
            class_tars = [m.name for m in tar.getmembers() if m.name.endswith(".tar")]
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read the archive {train_tar}: {e}") from e
    classes = sorted(Path(n).stem for n in class_tars)
    if not classes:
        raise DataError(f"{train_tar} holds no per-class .tar files")
    splits: dict[str, Callable[[], Iterator[RawExample]]] = {}

    def train_iter() -> Iterator[RawExample]:
        with tarfile.open(train_tar, "r|*") as outer:
            for m in outer:
                if not (m.isfile() and m.name.endswith(".tar")):
                    continue
                wnid = Path(m.name).stem
                with tarfile.open(fileobj=outer.extractfile(m), mode="r|*") as inner:
                    for im in inner:
                        if im.isfile():
                            f = inner.extractfile(im)
                            yield f"train/{wnid}/{im.name}", wnid, f.read() if f else b""

    splits["train"] = train_iter
    if val_tar.exists():
        try:
            with tarfile.open(val_tar) as tar:
                val_names = [Path(m.name).name for m in tar.getmembers() if m.isfile()]
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"cannot read the archive {val_tar}: {e}") from e
        labels = imagenet_val_labels(root, val_names)
        unknown = sorted({w for w in labels.values() if w not in set(classes)})
        if unknown:
            raise DataError(f"validation labels name classes not in the train tar: {unknown[:3]}")

        def val_iter() -> Iterator[RawExample]:
            with tarfile.open(val_tar, "r|*") as tar:
                for m in tar:
                    name = Path(m.name).name
                    if not m.isfile():
                        continue
                    if name not in labels:
                        report.skipped.append((name, "no label in the validation labels file"))
                        continue
                    f = tar.extractfile(m)
                    yield f"validation/{name}", labels[name], f.read() if f else b""

        splits["validation"] = val_iter
    return classes, splits


def read_idx(path: Path) -> np.ndarray:
    """Reads an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise DataError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(dtypes[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise DataError(f"{path}: header says {dims} ({expected} bytes) but holds {len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def idx_source(root: Path, report: ImportReport, class_names: list[str] | None) -> Source:
    arrays = {}
    for prefix, split in (("train", "train"), ("t10k", "test")):
        images = sorted(root.glob(f"{prefix}-images-idx3-ubyte*"))
        labels = sorted(root.glob(f"{prefix}-labels-idx1-ubyte*"))
        if images and labels:
            x, y = read_idx(images[0]), read_idx(labels[0])
            if len(x) != len(y):
                raise DataError(f"{images[0]} has {len(x)} images but {labels[0]} {len(y)} labels")
            arrays[split] = (x.astype(np.uint8), y.astype(np.int64))
    if not arrays:
        raise DataError(f"no IDX files (train-images-idx3-ubyte[.gz] ...) found in {root}")
    return arrays_source(arrays, report, class_names)


def npz_source(path: Path, report: ImportReport, class_names: list[str] | None) -> Source:
    try:
        npz = np.load(path)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    arrays = {}
    for key in npz.files:
        if key.startswith("x_"):
            split = key[2:]
            if f"y_{split}" not in npz.files:
                raise DataError(f"{path} has {key} but no y_{split}")
            arrays[split] = (npz[key], npz[f"y_{split}"])
    if not arrays:
        raise DataError(f"{path} holds no x_<split> / y_<split> arrays")
    return arrays_source(arrays, report, class_names)


def digits_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's 1,797 8x8 digits as uint8; a fixed random 20% (seed 0) is the 'test' split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    test = np.zeros(len(images), dtype=bool)
    test[np.random.default_rng(0).permutation(len(images))[: len(images) // 5]] = True
    return {"train": (images[~test], labels[~test]), "test": (images[test], labels[test])}


def arrays_source(arrays: dict[str, tuple[np.ndarray, np.ndarray]], report: ImportReport,
                  class_names: list[str] | None = None) -> Source:
    all_labels = np.concatenate([np.asarray(y).reshape(-1) for _, y in arrays.values()])
    if all_labels.size and all_labels.min() < 0:
        raise DataError("labels must be non-negative integers")
    num_classes = int(all_labels.max()) + 1 if all_labels.size else 0
    names = class_names or [str(i) for i in range(num_classes)]
    if len(names) < num_classes:
        raise DataError(f"{len(names)} class names for {num_classes} classes")
    for split, (x, y) in arrays.items():
        if x.ndim not in (3, 4) or len(x) != len(y):
            raise DataError(f"split {split!r}: images must be [N, H, W(, C)] with N labels, "
                            f"got {x.shape} and {np.shape(y)}")

    def split_iter(split: str) -> Iterator[RawExample]:
        x, y = arrays[split]
        for i in range(len(x)):
            yield f"{split}/{i}", names[int(y[i])], encode_png(np.asarray(x[i], dtype=np.uint8))

    return names, {s: (lambda s=s: split_iter(s)) for s in sorted(arrays)}


def open_source(source: str, report: ImportReport, class_names: list[str] | None = None,
                layout: str = "auto", holdout: float = 0.0, seed: int = 0) -> Source:
    """Class names come from the folders for image folders and tarballs; `class_names` names the
    integer labels of array sources (IDX, .npz, digits), which otherwise are '0', '1', ...
    `layout`, `holdout` and `seed` read image folders and tarballs (`plan_layout`, `hold_out`)."""
    if layout not in LAYOUTS:
        raise DataError(f"--layout={layout!r} must be one of {LAYOUTS}")
    path = Path(source).expanduser()
    images = dict(layout=layout, holdout=holdout, seed=seed)

    def not_images(kind: str) -> None:
        if layout != "auto" or holdout:
            raise DataError(f"--layout and --holdout are for image folders and tarballs, not {kind}")

    if source == "digits":
        not_images("the embedded digits")
        return arrays_source(digits_arrays(), report, class_names)
    if not path.exists():
        raise DataError(f"--source={source}: no such file or folder")
    if path.is_dir():
        if (path / IMAGENET_TRAIN_TAR).exists():
            not_images("the ILSVRC-2012 tarballs")
            return imagenet_source(path, report)
        if any(path.glob("*-idx[13]-ubyte*")):
            not_images("IDX files")
            return idx_source(path, report, class_names)
        if class_names:
            raise DataError("--class_names is for IDX / .npz sources; folders name their classes")
        return folder_source(path, report, **images)
    if path.name.endswith((".tar", ".tar.gz", ".tgz")):
        if class_names:
            raise DataError("--class_names is for IDX / .npz sources; tarballs name their classes")
        return tar_source(path, report, **images)
    if path.suffix == ".npz":
        not_images("an .npz file")
        return npz_source(path, report, class_names)
    raise DataError(f"--source={source}: expected a folder, a .tar(.gz), an .npz or 'digits'")


# --------------------------------------------------------------------------- the TFDS builder


def _make_builder(name: str, data_dir: str, class_names: list[str],
                  split_iters: dict[str, Callable[[], Iterator[RawExample]]],
                  report: ImportReport, description: str, resize_shorter: int = 0):
    import tensorflow_datasets as tfds

    seen: dict[bytes, str] = {}  # content digest -> the first file with it

    def generate(split: str):
        for example_id, label, raw in split_iters[split]():
            if isinstance(raw, bytes) and raw:
                digest = hashlib.blake2b(raw, digest_size=16).digest()
                if digest in seen:
                    report.duplicates.append((example_id, seen[digest]))
                else:
                    seen[digest] = example_id
            try:
                image = checked_image_bytes(raw, resize_shorter)
            except Exception as e:  # noqa: BLE001 - any decode failure is reported, not raised
                report.skipped.append((example_id, decode_error(
                    e, raw if isinstance(raw, bytes) else None)))
                continue
            report.count(split, label)
            yield example_id, {"image": image, "label": -1 if label is None else label,
                               "id": example_id}

    class ImportedImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version(DATASET_VERSION)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description=description,
                features=tfds.features.FeaturesDict({
                    # Encoded JPEG/PNG bytes, decoded by dcjax.data.pipeline (no TensorFlow).
                    "image": tfds.features.Tensor(shape=(), dtype=np.bytes_),
                    "label": tfds.features.ClassLabel(names=class_names),
                    "id": tfds.features.Text(),
                }),
                supervised_keys=("image", "label"),
                # Records keep the generator's order; ids are stored anyway.
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split) for split in split_iters}

        def _generate_examples(self, split):
            yield from generate(split)

    ImportedImages.name = name
    return ImportedImages(data_dir=data_dir, file_format="array_record")


def _quiet_tfds() -> None:
    import tensorflow_datasets as tfds
    from absl import logging

    tfds.disable_progress_bar()
    logging.set_verbosity(logging.WARNING)


def prepare(source: str, name: str, data_dir: str | None = None, overwrite: bool = False,
            class_names: list[str] | None = None, verbose: bool = True,
            resize_shorter: int = 0, layout: str = "auto", holdout: float = 0.0,
            seed: int = 0) -> ImportReport:
    """Imports `source` as the TFDS ArrayRecord dataset `name` under `data_dir`; returns the report.

    `resize_shorter` > 0 stores a resized copy (shorter side at most that many pixels, JPEG).
    `layout` says how a folder or tarball is read (LAYOUTS); `holdout` moves that fraction of its
    'train' images, drawn with `seed`, into a 'validation' split."""
    if resize_shorter < 0:
        raise DataError(f"--resize_shorter={resize_shorter} must be >= 0")
    if not _NAME_RE.match(name):
        raise DataError(f"--name={name!r}: use lowercase letters, digits and '_', starting with a letter")
    data_dir = resolve_data_dir(data_dir)
    target = dataset_dir(name, data_dir)
    if target.exists():
        if not overwrite:
            raise DataError(f"dataset {name!r} already exists at {target}; pass --overwrite to replace it")
        shutil.rmtree(target)
    report = ImportReport(name=name, source=source, path=str(target))
    names, split_iters = open_source(source, report, class_names, layout, holdout, seed)
    if not split_iters:
        ignored = sum(report.ignored.values())
        raise DataError(f"--source={source}: found no images to import ({len(report.skipped)} "
                        f"file(s) outside the layout, {ignored} not images by name)")
    bad_splits = [s for s in split_iters if not _SPLIT_RE.match(s)]
    if bad_splits:
        raise DataError(f"split folder names must be identifiers, got {bad_splits}")
    report.class_names = list(names)
    builder = _make_builder(name, data_dir, names, split_iters, report,
                            description=f"Imported by dcjax.data.prepare from {source}",
                            resize_shorter=resize_shorter)
    _quiet_tfds()
    # TFDS prints "Downloading and preparing dataset Unknown size ..." and "downloaded" lines on
    # stdout, though nothing is downloaded: the import's own report below says what was written.
    with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare()
    empty = [s for s in split_iters if report.total(s) == 0]
    if empty:
        shutil.rmtree(target, ignore_errors=True)
        raise DataError(f"no image in split(s) {empty} could be decoded; nothing was written")
    with open(target / REPORT_FILE, "w") as f:
        json.dump(report.to_json(), f, indent=1)
    if verbose:
        print(report.format())
    return report


def ensure_embedded(name: str, data_dir: str | None = None) -> None:
    """Imports the embedded dataset `name` (digits) on first use; does nothing for other names or
    when it is there already."""
    if name not in EMBEDDED:
        return
    data_dir = resolve_data_dir(data_dir)
    if not (dataset_dir(name, data_dir) / REPORT_FILE).exists():
        print(f"preparing the embedded dataset {name!r} in {data_dir} (first use)")
        prepare(name, name, data_dir)


def main(argv: list[str]) -> None:
    from absl import flags

    del argv
    flags_ = flags.FLAGS
    class_names = [c for c in (flags_.class_names or "").split(",") if c] or None
    try:
        prepare(flags_.source, flags_.name, flags_.data_dir, flags_.overwrite, class_names,
                resize_shorter=flags_.resize_shorter, layout=flags_.layout,
                holdout=flags_.holdout, seed=flags_.seed)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("source", None, "Image folder, .tar(.gz), IDX folder, .npz, or 'digits'.")
    flags.DEFINE_string("name", None, "Dataset name (lowercase, digits, '_').")
    flags.DEFINE_string("data_dir", None, "TFDS data dir (default $DCJAX_DATA_DIR or "
                        "~/tensorflow_datasets).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing dataset of the same name.")
    flags.DEFINE_string("class_names", None, "Comma-separated class names for integer labels "
                        "(IDX / .npz sources).")
    flags.DEFINE_integer("resize_shorter", 0, "Store a resized copy: images whose shorter side is "
                         "longer are resized to it (JPEG q90); 0 keeps them as they are.")
    flags.DEFINE_enum("layout", "auto", list(LAYOUTS), "How a folder or tarball is read: "
                      "split_class (SPLIT/CLASS/IMAGE), class (CLASS/.../IMAGE, one train split), "
                      "flat (every image at any depth, one unlabeled train split), auto "
                      "(split_class when laid out so, else flat).")
    flags.DEFINE_float("holdout", 0.0, "Move this fraction of the train images (seeded) into a "
                       "'validation' split.")
    flags.DEFINE_integer("seed", 0, "Seed of the --holdout draw.")
    flags.mark_flags_as_required(["source", "name"])


if __name__ == "__main__":
    from absl import app

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    from dcjax import cli

    app.run(main, flags_parser=cli.parse_flags)
