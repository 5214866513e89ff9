"""Opening datasets for random access: TFDS ArrayRecord sources, no TensorFlow needed.

Two kinds of dataset are read the same way:
  * those imported by `dcjax.data.prepare` (`<data_dir>/<name>/1.0.0/` with `import_report.json`);
  * those TFDS builds itself (imagenet2012 from the manual download, cifar10, imagenette, ...), once
    prepared in ArrayRecord format (`file_format='array_record'`) in the same data dir.
The embedded default, `digits`, is imported by `dcjax.data.importer.ensure_embedded`, which the
entry points call first (reading never imports: this module does not depend on `prepare`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

DATASET_VERSION = "1.0.0"
REPORT_FILE = "import_report.json"
RUNS_FILE = "runs.json"  # <data_dir>/<name>/runs.json: the workdirs that trained on the dataset
EMBEDDED = ("digits",)


class DataError(ValueError):
    """Missing, unreadable or inconsistent data; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    class_names: tuple[str, ...]
    split_sizes: dict[str, int]
    path: str
    split_files: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def resolve_data_dir(data_dir: str | None) -> str:
    """`data_dir`, else $DCJAX_DATA_DIR, else ~/tensorflow_datasets (the TFDS default)."""
    chosen = data_dir or os.environ.get("DCJAX_DATA_DIR") or "~/tensorflow_datasets"
    return str(Path(chosen).expanduser())


def dataset_dir(name: str, data_dir: str) -> Path:
    return Path(data_dir) / name / DATASET_VERSION


def _imported_builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds

    path = dataset_dir(name, data_dir)
    if not (path / REPORT_FILE).exists():
        return None
    try:
        return tfds.builder_from_directory(str(path))
    except Exception as e:  # noqa: BLE001 - tfds raises many types for a damaged folder
        raise DataError(f"dataset {name!r} at {path} is damaged ({type(e).__name__}: {e}); "
                        f"re-import it with `python -m dcjax.data.prepare --overwrite`") from e


def _tfds_builder(name: str, data_dir: str):
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception:  # noqa: BLE001 - unknown to TFDS
        return None
    if not builder.is_prepared():
        return None
    return builder


def load_builder(name: str, data_dir: str | None = None):
    """The TFDS builder of dataset `name` (imported by dcjax.data.prepare, or TFDS-prepared)."""
    data_dir = resolve_data_dir(data_dir)
    builder = _imported_builder(name, data_dir)
    if builder is None:
        builder = _tfds_builder(name, data_dir)
    if builder is None:
        raise DataError(
            f"dataset {name!r} not found in {data_dir}: import it with "
            f"`python -m dcjax.data.prepare --source={name if name in EMBEDDED else '...'} "
            f"--name={name} --data_dir={data_dir}` "
            f"or prepare the TFDS dataset of that name in ArrayRecord format there")
    return builder


def dataset_info(builder) -> DatasetInfo:
    label = builder.info.features["label"] if "label" in builder.info.features else None
    names = tuple(label.names) if label is not None and hasattr(label, "names") else ()
    sizes = {split: info.num_examples for split, info in builder.info.splits.items()}
    files = {split: tuple(str(f) for f in info.filepaths)
             for split, info in builder.info.splits.items()}
    return DatasetInfo(name=builder.name, class_names=names, split_sizes=sizes,
                       path=str(builder.data_dir), split_files=files)


def open_split(name: str, split: str, data_dir: str | None = None) -> tuple[Any, DatasetInfo]:
    """A random-access source (`len`, `[i]` -> dict with 'image', 'label') and the dataset's info."""
    builder = load_builder(name, data_dir)
    info = dataset_info(builder)
    if split not in info.split_sizes:
        raise DataError(f"dataset {name!r} has no split {split!r}; it has {sorted(info.split_sizes)}")
    missing = [str(f) for f in builder.info.splits[split].filepaths if not Path(f).exists()]
    if missing:
        raise DataError(f"dataset {name!r} split {split!r} is incomplete: {len(missing)} file(s) "
                        f"missing, e.g. {missing[0]}; re-import or re-prepare it")
    try:
        source = builder.as_data_source(split=split)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot open {name!r} split {split!r} for random access ({e}); "
                        f"it must be stored in ArrayRecord format") from e
    if len(source) != info.split_sizes[split]:
        raise DataError(f"dataset {name!r} split {split!r} holds {len(source)} records but its "
                        f"metadata says {info.split_sizes[split]}: the files are incomplete")
    return source, info


def record_run(name: str, data_dir: str | None, workdir: str | Path) -> None:
    """Adds `workdir` to the dataset's runs.json (beside its version folder, so an overwrite keeps
    it); a data dir that cannot be written is left as it is."""
    import json

    path = Path(resolve_data_dir(data_dir)) / name / RUNS_FILE
    try:
        runs = json.loads(path.read_text()) if path.exists() else []
        workdir = str(Path(workdir).absolute())
        if workdir not in runs:
            path.write_text(json.dumps(runs + [workdir], indent=1))
    except (OSError, ValueError):
        return


def runs_using(name: str, data_dir: str | None) -> list[str]:
    """The recorded workdirs that still hold checkpoints of a run on dataset `name`."""
    import json

    path = Path(resolve_data_dir(data_dir)) / name / RUNS_FILE
    try:
        runs = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    out = []
    for workdir in runs:
        try:
            config = json.loads((Path(workdir) / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if config.get("data", {}).get("name") == name and (Path(workdir) / "checkpoints").is_dir():
            out.append(workdir)
    return out
