"""What every protocol needs besides the network (dcjax.runs loads that): the splits, and where
results go."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding

from dcjax.config_lib import (
    ConfigError,
    resolve_auto,
    validate_against_data,
)
from dcjax.data.datasets import DatasetInfo, open_split
from dcjax.data.importer import ensure_embedded
from dcjax.sharding import rows
from dcjax.validation import validate


@dataclasses.dataclass
class Splits:
    train: Any
    test: Any
    info: DatasetInfo
    # 'train' / 'test' -> (ViewCache, global batch): where a split's deterministic view is kept
    # between extractions (the training loop passes its caches; a one-off evaluation has none).
    caches: dict = dataclasses.field(default_factory=dict)
    test_split: str = ""  # the name of `test`'s split ('' = config.data.eval_split)


def open_splits(config: ml_collections.ConfigDict, held_out_required: bool = True) -> Splits:
    """The training split and the held-out one (config.data.eval_split). Without
    `held_out_required`, a dataset with no such split (a folder imported without --holdout) is
    evaluated on its training split, as the end-of-run comparison does."""
    d = config.data
    validate(config, num_devices=jax.device_count())
    if not d.eval_split and held_out_required:
        raise ConfigError(f"config.data.eval_split is empty: evaluation needs a held-out split of "
                          f"{d.name!r}")
    ensure_embedded(d.name, d.data_dir or None)
    train, info = open_split(d.name, d.train_split, d.data_dir or None)
    for note in resolve_auto(config, info.split_sizes):
        if jax.process_index() == 0:
            print(note)
    validate_against_data(config, info.split_sizes)
    if info.num_classes < 2:
        raise ConfigError(f"dataset {d.name!r} has no class labels to evaluate against")
    if not held_out_required and d.eval_split not in info.split_sizes:
        return Splits(train, train, info, test_split=d.train_split)
    test, _ = open_split(d.name, d.eval_split, d.data_dir or None)
    return Splits(train, test, info, test_split=d.eval_split)


def rows_sharding(mesh: Mesh) -> NamedSharding:
    return rows(mesh)


def write_result(workdir: str | Path, name: str, result: dict) -> Path:
    """RUN/eval/<name>.json (process 0 only)."""
    path = Path(workdir) / "eval" / f"{name}.json"
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=_json_default))
    return path


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
