"""What every protocol needs: the run's config, the network (trained or at its initialisation), the
splits and the device mesh."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding

from dcjax.checkpoint import Checkpointer, abstract_like
from dcjax.config_lib import (
    ConfigError,
    base_config,
    resolve_auto,
    validate_against_data,
)
from dcjax.data.datasets import DatasetInfo, open_split
from dcjax.data.prepare import ensure_embedded
from dcjax.models import from_config
from dcjax.sharding import default_mesh, replicated, rows
from dcjax.step import create_train_state
from dcjax.validation import validate

INITS = ("trained", "random")


def config_from_run(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config a run wrote to `workdir/config.json`, on top of today's defaults (so keys added
    since, such as the eval section, get their default values)."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        raise ConfigError(f"--workdir={Path(workdir)} is not a dcjax run: it has no config.json "
                          f"(a run's directory holds config.json, checkpoints/ and export/)")
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from e
    config = base_config()
    _merge(config, saved)
    return config


def _merge(config: ml_collections.ConfigDict, saved: dict) -> None:
    for key, value in saved.items():
        if isinstance(value, dict) and key in config and isinstance(config[key], ml_collections.ConfigDict):
            _merge(config[key], value)
        elif key in config and isinstance(config[key], tuple):
            config[key] = tuple(value)
        else:
            with config.unlocked():
                config[key] = value


@dataclasses.dataclass
class Network:
    model: Any
    params: Any
    batch_stats: Any
    step: int | None  # the checkpoint's step; None for the random initialisation
    epochs_trained: int = 0  # epochs completed when the checkpoint was written

    @property
    def variables(self) -> tuple:
        return self.params, self.batch_stats


def load_network(config: ml_collections.ConfigDict, workdir: str | Path, init: str = "trained",
                 step: int | None = None, mesh: Mesh | None = None) -> Network:
    """The run's network: its latest (or `step`) checkpoint, or with init='random' the same
    architecture at the run's own initialisation (config.seed), i.e. the paper's "random" row, or
    with init=DIR a network converted by `python -m dcjax.convert` (its top layer, when absent or
    of another k, at the run's initialisation)."""
    from dcjax.models import interop

    if init not in INITS and not interop.is_network_dir(init):
        raise ConfigError(f"--init={init!r} must be one of {INITS} or a folder written by "
                          f"python -m dcjax.convert")
    mesh = mesh or default_mesh()
    model = from_config(config, config.clustering.k)
    state = jax.jit(lambda: create_train_state(model, config, jax.random.key(config.seed)),
                    out_shardings=replicated(mesh))()
    if init == "random":
        return Network(model, state.params, state.batch_stats, None)
    if init not in INITS:
        params, stats = interop.load_into(init, state.params, state.batch_stats)
        return Network(model, jax.device_put(params, replicated(mesh)),
                       jax.device_put(stats, replicated(mesh)), None)
    directory = Path(workdir) / "checkpoints"
    ckpt = Checkpointer(directory)
    try:
        steps = ckpt.steps()
        if not steps:
            raise ConfigError(f"no checkpoint in {directory}; train first, or use --init=random")
        if step is not None and step not in steps:
            raise ConfigError(f"--step={step} is not a checkpoint in {directory} (it has {steps})")
        restored = ckpt.restore_latest(abstract_like(state), step=step)
    finally:
        ckpt.close()
    if restored is None:
        raise ConfigError(f"no readable checkpoint in {directory}")
    found, state, _, meta = restored
    epochs = int(meta["epoch"]) + 1 if meta.get("epoch_done") else int(meta["epoch"])
    return Network(model, state.params, state.batch_stats, found, epochs)


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
