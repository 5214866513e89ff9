"""`prepare(source, name, ...)`: a source (dcjax.data.sources) written as a TFDS ArrayRecord
dataset, with its import report; `ensure_embedded` imports the embedded digits on first use. The
command line is dcjax/data/prepare.py."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator

import numpy as np

from dcjax.data.datasets import (
    DATASET_VERSION,
    EMBEDDED,
    REPORT_FILE,
    DataError,
    dataset_dir,
    resolve_data_dir,
    runs_using,
)
from dcjax.data.images import decode_error
from dcjax.data.import_report import ImportReport
from dcjax.data.sources import RawExample, checked_image_bytes, open_source

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_SPLIT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


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
    old = None
    if target.exists():
        if not overwrite:
            raise DataError(f"dataset {name!r} already exists at {target}; pass --overwrite to replace it")
        users = runs_using(name, data_dir)
        if users and verbose:
            print(f"replacing dataset {name!r}, which {len(users)} run(s) trained on: "
                  f"{', '.join(users)}. A run refuses to resume or export on a dataset whose image "
                  f"count changed; its clusters stay those of the old images, and python -m "
                  f"dcjax.predict --workdir=RUN --source=FOLDER gives new images their clusters; "
                  f"training on the new version starts a new --workdir from a run's network "
                  f"(--config=configs/folder.py:{name},init=RUN)")
        # Kept until the new import is written, and put back if it fails.
        old = target.with_name(f"{target.name}.replaced-{os.getpid()}")
        target.rename(old)
    try:
        report = _write(source, name, data_dir, target, class_names, verbose, resize_shorter,
                        layout, holdout, seed)
    except BaseException:
        if old is not None:
            shutil.rmtree(target, ignore_errors=True)
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return report


def _write(source, name, data_dir, target, class_names, verbose, resize_shorter, layout, holdout,
           seed) -> ImportReport:
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
