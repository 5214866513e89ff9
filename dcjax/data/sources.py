"""The sources an import reads (docs in dcjax/data/prepare.py): image folders and tarballs (read
through dcjax.data.layout), the ILSVRC-2012 tarballs, IDX files, .npz arrays and the embedded
digits. A source is (class_names, {split: callable returning an iterator of (id, label name, raw
bytes)}); `checked_image_bytes` is the check every image gets while it is written."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from dcjax.data.datasets import DataError
from dcjax.data.images import needs_conversion, to_rgb8
from dcjax.data.import_report import ImportReport
from dcjax.data.layout import (
    LAYOUTS,
    Plan,
    hold_out,
    plan_layout,
    triage,
)

_KEEP_FORMATS = {"JPEG", "PNG"}


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
