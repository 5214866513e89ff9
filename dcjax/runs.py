"""Loading a run: its config, its checkpoints, its network. One module for every command that
reads a run: the runner (resume), evaluate, export, predict, gallery and convert.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from dcjax.checkpoint import Checkpointer, abstract_like
from dcjax.config_lib import ConfigError, as_tuples, base_config
from dcjax.sharding import default_mesh, replicated
from dcjax.workdir import WorkdirError

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
            config[key] = as_tuples(value)
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
    """The run's network (for any method: `Method.initial_network`): its latest (or `step`)
    checkpoint, or with init='random' the same architecture at the run's own initialisation
    (config.seed), i.e. the paper's "random" row, or with init=DIR a network converted by
    `python -m dcjax.convert` (the layers the file lacks, such as a top layer of another k, at the
    run's initialisation). A workdir without checkpoints/ whose config.model.init is such a folder
    (`export --init` writes one) gives that network as its trained one."""
    from dcjax import methods
    from dcjax.models import interop

    if init not in INITS and not interop.is_network_dir(init):
        raise ConfigError(f"--init={init!r} must be one of {INITS} or a folder written by "
                          f"python -m dcjax.convert")
    mesh = mesh or default_mesh()
    model, params, stats = methods.get(config.method).initial_network(config, mesh)
    if init == "random":
        return Network(model, params, stats, None)
    if init not in INITS:
        params, stats = interop.load_into(init, params, stats)
        return Network(model, jax.device_put(params, replicated(mesh)),
                       jax.device_put(stats, replicated(mesh)), None)
    directory = Path(workdir) / "checkpoints"
    if not directory.exists() and config.model.init and interop.is_network_dir(config.model.init):
        # A folder written by `export --init` holds no checkpoint: its network is model.init.
        params, stats = interop.load_into(config.model.init, params, stats)
        return Network(model, jax.device_put(params, replicated(mesh)),
                       jax.device_put(stats, replicated(mesh)), None)
    ckpt = Checkpointer(directory)
    try:
        steps = ckpt.steps()
        if not steps:
            raise ConfigError(f"no checkpoint in {directory}; train first, or use --init=random")
        if step is not None and step not in steps:
            raise ConfigError(f"--step={step} is not a checkpoint in {directory} (it has {steps})")
        found, variables, meta = ckpt.restore_variables(
            abstract_like({"params": params, "batch_stats": stats}), step=step)
    finally:
        ckpt.close()
    epochs = int(meta["epoch"]) + 1 if meta.get("epoch_done") else int(meta["epoch"])
    return Network(model, variables["params"], variables["batch_stats"], found, epochs)


def checkpoint_meta(workdir: str | Path, step: int) -> dict:
    """The JSON metadata of checkpoint `step` (epoch, num_images, history, config), or {} when it
    cannot be read."""
    try:
        return json.loads((Path(workdir) / "checkpoints" / str(step) / "meta" / "metadata")
                          .read_text())
    except (OSError, ValueError):
        return {}


def check_same_images(workdir: str | Path, step: int, config: ml_collections.ConfigDict,
                      num_images: int) -> None:
    """DataError unless the training split has the number of images checkpoint `step` was trained
    on (as a resumed run requires): clusters of other images are not this run's."""
    from dcjax.data.datasets import DataError

    before = checkpoint_meta(workdir, step).get("num_images")
    if before is not None and int(before) != num_images:
        d = config.data
        raise DataError(f"dataset {d.name!r} split {d.train_split!r} has {num_images} images now "
                        f"but had {before} when checkpoint {step} of {workdir} was written: its "
                        f"clusters are those of the old images. New images get them without "
                        f"training: python -m dcjax.predict --workdir={workdir} --source=FOLDER "
                        f"--out=FILE.csv; to train on the whole grown set, start a new --workdir "
                        f"from this run's network: --config=configs/folder.py:{d.name},"
                        f"init={workdir}")


def saved_config(workdir: Path) -> dict | None:
    """The config a workdir's checkpoints were written with (config.json, else the newest
    checkpoint's metadata), or None when the workdir has no checkpoint."""
    ckpt_dir = workdir / "checkpoints"
    steps = sorted((int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()),
                   reverse=True) if ckpt_dir.is_dir() else []
    if not steps:
        return None
    for path in [workdir / "config.json"] + [ckpt_dir / str(s) / "meta" / "metadata" for s in steps]:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        return record.get("config", record) if path.name == "metadata" else record
    raise WorkdirError(f"--workdir={workdir} has checkpoints but no readable config.json: cannot "
                       f"tell which config wrote them; use a new --workdir")


def init_weights(init: str, params: Any, batch_stats: Any) -> tuple[dict, dict]:
    """config.model.init's network in place of a drawn `params` / `batch_stats` (host arrays):
    a folder written by `python -m dcjax.convert` or `export --init`, or a dcjax run (its latest
    checkpoint, of either method). Layers the source lacks or holds at another size (a top layer
    of another k, DeepCluster-v2's head for a DeepCluster model) keep their drawn values."""
    from dcjax.models import interop

    path = Path(init).expanduser()
    if interop.is_network_dir(path):
        return interop.load_into(path, params, batch_stats)
    if not (path / "config.json").exists():
        raise ConfigError(f"config.model.init={init} is neither a dcjax run (config.json, "
                          f"checkpoints/) nor a folder written by python -m dcjax.convert or "
                          f"export --init (network.npz, network.json)")
    run_config = config_from_run(path)
    net = load_network(run_config, path)
    what = "export --init folder" if net.step is None else f"checkpoint {net.step}"
    return interop.fit_into(net.params, net.batch_stats,
                            f"config.model.init={init} (a {run_config.model.name} run, {what})",
                            params, batch_stats)
