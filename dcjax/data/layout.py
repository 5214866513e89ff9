"""How a folder or tarball of images becomes splits and labels (`--layout`), and the seeded
hold-out of a validation split."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from dcjax.data.datasets import DataError
from dcjax.data.import_report import ImportReport

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
