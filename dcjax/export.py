r"""The clustering of a trained network, per image:

    python -m dcjax.export --workdir=RUN [--step=N] [--out=DIR]
    python -m dcjax.export --init=NETWORK_OR_RUN --data=NAME --out=DIR [--k=K] [--config=FILE]

The trainer writes RUN/export/ at the end of a run; the first form writes the same for any
checkpoint (the latest by default; `--out` defaults to RUN/export, or RUN/export_step_N with
--step). The second clusters another dataset with a trained network, without training: NETWORK is
a folder written by `python -m dcjax.convert` (an official AlexNet / VGG16, a torchvision ResNet,
swav's DeepCluster-v2, ...), RUN any dcjax run (DeepCluster or DeepCluster-v2: its trunk). DIR then
becomes a folder that `predict`, `gallery` and `evaluate --workdir=DIR` read like a run's:
DIR/config.json (the network's geometry, the dataset, k), DIR/network/ (the network, converted, so
DIR stands alone and `--config.model.init=DIR/network` fine-tunes from it) and DIR/export/. k
defaults to one cluster per 100 images (config_lib.auto_k); a converted network's geometry comes
from its architecture (224 px for the ImageNet networks, 32 px for the CIFAR-stem ResNets), a run's
from its config, and `--config` replaces it. Files, all in dataset order (row i = image i of the
training split):

  assignments.csv     id (the image's path as imported), cluster (its nearest centroid), distance
                      (Euclidean, in the PCA-whitened space), label (the class name; only when the
                      dataset has labels)
  clusters.csv        cluster, size, cohesion (0-1: the norm of the mean of its images' rows of
                      features_pca.npy; dcjax.quality)
  features_fc7.npy    [N, fc_dim] float32, fc7 before its ReLU, deterministic view
  features_pca.npy    [N, pca_dim] float32, PCA-whitened and L2-normalised (what k-means clusters)
  clustering.npz      pca_mean [fc_dim], pca_components [fc_dim, pca_dim], pca_eigenvalues
                      [pca_dim], centroids [k, pca_dim], k, config (JSON), checkpoint_step,
                      epochs_trained, dataset, num_images: what `dcjax.predict` needs

The feature files are written shard by shard, a chunk of rows at a time, by the process that holds
each shard: no host ever holds the whole array. The clustering is that of dcjax.pseudolabels with
seed `config.seed + epochs_trained`, so this command on a run's final checkpoint writes what the
run itself wrote. docs/own_images.md shows the whole path from a folder of photos.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from dcjax.clustering import PCA
from dcjax.pseudolabels import Clustering

CHUNK_ROWS = 65536  # rows fetched from a device at a time when writing features
FILES = ("assignments.csv", "clusters.csv", "features_fc7.npy", "features_pca.npy",
         "clustering.npz")


def read_ids(source: Any, chunk: int = 1024) -> list[str]:
    """The `id` of every record of `source`, in order (record indices when it stores none)."""
    ids: list[str] = []
    for start in range(0, len(source), chunk):
        keys = list(range(start, min(start + chunk, len(source))))
        records = (source.__getitems__(keys) if hasattr(source, "__getitems__")
                   else [source[i] for i in keys])
        for i, r in zip(keys, records):
            value = r.get("id", str(i)) if isinstance(r, dict) else str(i)
            ids.append(value.decode() if isinstance(value, bytes) else str(value))
    return ids


def _host(x) -> np.ndarray:
    """A replicated (possibly multi-host) array on this host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def write_rows_in_order(path: Path, rows: jax.Array, image: np.ndarray, n: int) -> None:
    """Writes row-sharded `rows` [R, D] as an [n, D] float32 .npy file in dataset order, row r at
    position image[r] (rows with image -1 are padding). Each process writes the shards it holds,
    CHUNK_ROWS rows at a time, into one memory-mapped file created by process 0."""
    d = rows.shape[1]
    tmp = path.with_name(path.name + ".partial")
    if jax.process_index() == 0:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, d)).flush()
    _sync(f"create {path.name}")
    out = np.lib.format.open_memmap(tmp, mode="r+")
    for shard in rows.addressable_shards:
        start = shard.index[0].start or 0
        size = shard.data.shape[0]
        for a in range(0, size, CHUNK_ROWS):
            b = min(a + CHUNK_ROWS, size)
            where = image[start + a: start + b]
            keep = where >= 0
            if keep.any():
                out[where[keep]] = np.asarray(shard.data[a:b], np.float32)[keep]
    out.flush()
    del out
    _sync(f"write {path.name}")
    if jax.process_index() == 0:
        os.replace(tmp, path)


def write_export(out: Path, clustering: Clustering, ids: list[str] | None,
                 class_names: tuple[str, ...],
                 config: ml_collections.ConfigDict, checkpoint_step: int | None,
                 epochs_trained: int) -> Path:
    """Writes FILES to `out` (see the module docstring). `clustering` must hold the nearest
    centroids and the features (cluster_network(..., nearest=True, keep_features=True)). `ids`
    (the images' ids in dataset order) are needed on process 0 only."""
    if clustering.features is None or clustering.nearest is None:
        raise ValueError("write_export needs cluster_network(..., nearest=True, keep_features=True)")
    n = len(clustering.assignment)
    lead = jax.process_index() == 0
    if lead and (ids is None or len(ids) != n):
        raise ValueError(f"write_export needs the {n} images' ids on process 0")
    if lead:
        out.mkdir(parents=True, exist_ok=True)
    _sync("export directory")
    write_rows_in_order(out / "features_fc7.npy", clustering.features.rows, clustering.image, n)
    write_rows_in_order(out / "features_pca.npy", clustering.reduced, clustering.image, n)
    if lead:
        labelled = len(class_names) >= 2 and clustering.labels.min() >= 0
        tmp = out / "assignments.csv.partial"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "cluster", "distance"] + (["label"] if labelled else []))
            for i in range(n):
                row = [ids[i], int(clustering.nearest[i]), f"{clustering.distance[i]:.6g}"]
                w.writerow(row + ([class_names[clustering.labels[i]]] if labelled else []))
        os.replace(tmp, out / "assignments.csv")
        write_clusters(out, clustering.nearest, clustering.k)
        tmp = out / "clustering.partial.npz"
        np.savez(tmp, pca_mean=_host(clustering.pca.mean),
                 pca_components=_host(clustering.pca.components),
                 pca_eigenvalues=_host(clustering.pca.eigenvalues), centroids=clustering.centroids,
                 k=np.int64(clustering.k), config=np.array(config.to_json_best_effort()),
                 checkpoint_step=np.int64(-1 if checkpoint_step is None else checkpoint_step),
                 epochs_trained=np.int64(epochs_trained), dataset=np.array(config.data.name),
                 num_images=np.int64(n))
        os.replace(tmp, out / "clustering.npz")
    _sync("export written")
    return out


def write_clusters(out: Path, nearest: np.ndarray, k: int) -> None:
    """OUT/clusters.csv: cluster, size, cohesion (dcjax.quality.cohesion on features_pca.npy)."""
    from dcjax.quality import cohesion

    features = np.load(out / "features_pca.npy", mmap_mode="r")
    sizes, values = cohesion(features, np.asarray(nearest), k)
    tmp = out / "clusters.csv.partial"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cluster", "size", "cohesion"])
        for c in range(k):
            w.writerow([c, int(sizes[c]), "" if np.isnan(values[c]) else f"{values[c]:.4f}"])
    os.replace(tmp, out / "clusters.csv")


def read_cohesion(out: Path) -> dict[int, float]:
    """{cluster: cohesion} of OUT/clusters.csv ({} for an export written before it existed)."""
    try:
        with open(out / "clusters.csv", newline="") as f:
            return {int(r["cluster"]): float(r["cohesion"]) for r in csv.DictReader(f)
                    if r["cohesion"]}
    except OSError:
        return {}


def cohesion_by_cluster(out: Path, k: int) -> np.ndarray:
    """[k] cohesion of each cluster from OUT/clusters.csv (NaN for an empty cluster)."""
    values = read_cohesion(out)
    return np.array([values.get(i, np.nan) for i in range(k)])


def _missing_export(path: Path) -> str:
    """The message for a missing export file: the folder is no run, or the run has no export."""
    run = path.parent.parent if path.parent.name == "export" else path.parent
    if not (run / "config.json").exists():
        return (f"{run} is not a dcjax run: it has no config.json (a run's directory holds "
                f"config.json, checkpoints/ and export/)")
    return f"{path} does not exist: run `python -m dcjax.export --workdir={run}` first"


def load_clustering(path: Path) -> dict:
    """clustering.npz as a dict: 'pca' (a PCA of numpy arrays), 'centroids', 'k', 'config' (a
    dict), 'checkpoint_step' (None for a random initialisation), 'epochs_trained', 'dataset'."""
    from dcjax.data.datasets import DataError

    try:
        z = np.load(path)
        out = {"pca": PCA(mean=z["pca_mean"], components=z["pca_components"],
                          eigenvalues=z["pca_eigenvalues"]),
               "centroids": z["centroids"], "k": int(z["k"]), "config": json.loads(str(z["config"])),
               "checkpoint_step": int(z["checkpoint_step"]), "epochs_trained": int(z["epochs_trained"]),
               "dataset": str(z["dataset"]), "num_images": int(z["num_images"])}
    except FileNotFoundError as e:
        raise DataError(_missing_export(path)) from e
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path} is not a dcjax clustering.npz ({type(e).__name__}: {e})") from e
    if out["checkpoint_step"] < 0:
        out["checkpoint_step"] = None
    return out


def export_checkpoint(workdir: str, step: int | None = None, out: str | None = None,
                      config: ml_collections.ConfigDict | None = None) -> Path:
    """Clusters the run's checkpoint (latest or `step`) and writes its export; returns the folder."""
    from dcjax.data.datasets import open_split
    from dcjax.data.importer import ensure_embedded
    from dcjax.features import write_rows_fn
    from dcjax.pseudolabels import cluster_network
    from dcjax.runs import check_same_images, config_from_run, load_network
    from dcjax.sharding import default_mesh
    from dcjax.step import make_feature_fn

    config = config or config_from_run(workdir)
    d = config.data
    ensure_embedded(d.name, d.data_dir or None)
    source, info = open_split(d.name, d.train_split, d.data_dir or None)
    mesh = default_mesh()
    net = load_network(config, workdir, "trained", step, mesh)
    check_same_images(workdir, net.step, config, len(source))
    epochs = net.epochs_trained
    clustering = cluster_network(config, jax.jit(make_feature_fn(net.model)), net.variables,
                                 source, mesh, int(config.seed) + epochs,
                                 write_rows=write_rows_fn(mesh), nearest=True, keep_features=True,
                                 verbose=jax.process_index() == 0)
    folder = Path(out) if out else Path(workdir) / ("export" if step is None else f"export_step_{step}")
    ids = read_ids(source) if jax.process_index() == 0 else None
    return write_export(folder, clustering, ids, info.class_names, config, net.step, epochs)


def network_config(init: str, data: str, config_file: str | None = None
                   ) -> tuple[ml_collections.ConfigDict, dict, dict, dict, int]:
    """(config, params, batch_stats, info, epochs_trained) to cluster dataset `data` with the
    network `init` (a dcjax.convert folder or a run), as DeepCluster (v1) clusters: the trunk's
    pooled / fc7 features, PCA-whitened, k-means. A DeepCluster-v2 network is kept whole; loading
    it into the DeepCluster model takes its trunk (interop.load_into)."""
    from dcjax.config_lib import ConfigError, load_config_file
    from dcjax.models import interop
    from dcjax.runs import config_from_run, load_network

    path = Path(init).expanduser()
    folder_config = Path(__file__).resolve().parents[1] / "configs" / "folder.py"
    if (path / "config.json").exists():  # a run
        run_config = config_from_run(path)
        net = load_network(run_config, path)
        params, stats = jax.device_get(net.params), jax.device_get(net.batch_stats)
        info = {"arch": run_config.model.name, "sobel": bool(run_config.model.sobel),
                "method": run_config.method, "source": f"run {path} (checkpoint {net.step})"}
        config = _config_file(config_file) if config_file else run_config
        epochs = net.epochs_trained
    elif interop.is_network_dir(path):
        params, stats, info = interop.load_network_dir(path)
        arch = info["arch"]
        if config_file:
            config = _config_file(config_file)
        else:
            small = arch.endswith("_cifar")
            config = load_config_file(str(folder_config), data + ("" if small else ",alexnet224"))
            if small:
                config.data.image_size, config.data.resize_size = 32, 36
            config.model.name, config.model.widths = arch, ()
            config.model.sobel = bool(info.get("sobel", True))
            config.model.fc_dim = int(info.get("fc_dim") or config.model.fc_dim)
        info = {**info, "source": str(info.get("source", path))}
        epochs = 0
    else:
        raise ConfigError(f"--init={init} is neither a dcjax run (config.json) nor a folder written "
                          f"by python -m dcjax.convert (network.npz, network.json)")
    with config.unlocked():
        config.method = "deepcluster"
        config.data.name = data
        config.data.train_split = "train"
        config.model.init = ""
    return config, params, stats, info, epochs


def _config_file(spec: str) -> ml_collections.ConfigDict:
    """`FILE` or `FILE:ARG`, as --config of the other commands."""
    from dcjax.config_lib import load_config_file

    path, _, arg = spec.partition(":")
    return load_config_file(path, arg or None)


def export_with_network(init: str, data: str, out: str, k: int = 0,
                        config_file: str | None = None) -> Path:
    """Clusters dataset `data` with the trained network `init` (no training) and writes a folder
    that predict, gallery and evaluate read like a run (module docstring)."""
    from dcjax.config_lib import ConfigError, resolve_auto, validate_against_data
    from dcjax.data.datasets import open_split
    from dcjax.data.importer import ensure_embedded
    from dcjax.features import write_rows_fn
    from dcjax.models import interop
    from dcjax.pseudolabels import cluster_network
    from dcjax.runs import load_network
    from dcjax.sharding import default_mesh
    from dcjax.step import make_feature_fn
    from dcjax.validation import validate

    folder = Path(out).expanduser()
    if (folder / "config.json").exists() or (folder / "export").exists():
        raise ConfigError(f"--out={folder} holds a run or an export already; choose a new folder")
    config, params, stats, info, epochs = network_config(init, data, config_file)
    d = config.data
    ensure_embedded(d.name, d.data_dir or None)
    source, dinfo = open_split(d.name, d.train_split, d.data_dir or None)
    config.clustering.k = k
    for note in resolve_auto(config, dinfo.split_sizes):
        print(note)
    validate_against_data(config, dinfo.split_sizes)
    mesh = default_mesh()
    lead = jax.process_index() == 0
    network_dir = (folder / "network").absolute()
    if lead:
        interop.save_network(network_dir, params, stats, info)
    _sync("network written")
    config.model.init = str(network_dir)
    validate(config, num_devices=jax.device_count())
    net = load_network(config, folder, str(network_dir), mesh=mesh)
    if lead:
        (folder / "config.json").write_text(config.to_json_best_effort(indent=1))
    clustering = cluster_network(config, jax.jit(make_feature_fn(net.model)), net.variables,
                                 source, mesh, int(config.seed) + epochs,
                                 write_rows=write_rows_fn(mesh), nearest=True, keep_features=True,
                                 verbose=lead)
    ids = read_ids(source) if lead else None
    nearest, labels, k = clustering.nearest, clustering.labels, clustering.k
    written = write_export(folder / "export", clustering, ids, dinfo.class_names, config, None,
                           epochs)
    del clustering
    if lead:
        print(f"{len(source):,} images of {data!r} in k = {k} clusters by {info.get('source', init)}")
        for line in without_training_lines(config, source, np.asarray(nearest), labels, k,
                                           written, dinfo.num_classes >= 2):
            print(line)
    return written


def without_training_lines(config: ml_collections.ConfigDict, source: Any,
                           assignment: np.ndarray, labels: np.ndarray, k: int, folder: Path,
                           labelled: bool) -> list[str]:
    """`export --init`'s closing lines: the label-free signals of the clustering (dcjax.quality)
    and, when the images are labelled, its NMI with the labels beside k-means on the raw pixels'."""
    from dcjax import quality
    from dcjax.metrics import nmi

    pixels = quality.pixel_clustering(config, source, k, int(config.seed))
    signals = quality.pixel_agreement(config, source, assignment, k, int(config.seed), pixels)
    out = quality.lines(signals, 0, cohesion_by_cluster(folder, k))
    if labelled and labels.min() >= 0:
        line = f"NMI with the labels (never used): {nmi(labels, assignment):.4f}"
        if pixels["labels"] is not None:
            pick = pixels["pick"]
            line += (f"; k-means on the raw pixels, same k: "
                     f"{nmi(labels[pick], pixels['labels']):.4f}")
        out.append(line)
    return out


def main(argv: list[str]) -> None:
    from absl import flags

    from dcjax import cli, distributed
    from dcjax.config_lib import ConfigError

    f = flags.FLAGS

    def body() -> None:
        distributed.initialize(f.coordinator_address, f.num_processes, f.process_id)
        if bool(f.workdir) == bool(f.init):
            raise ConfigError("give --workdir=RUN (its checkpoint) or --init=NETWORK_OR_RUN "
                              "--data=NAME --out=DIR (another dataset, no training)")
        if f.init:
            if not f.data or not f.out:
                raise ConfigError("--init needs --data=NAME (an imported dataset) and --out=DIR")
            folder = export_with_network(f.init, f.data, f.out, f.k, f.config)
            if jax.process_index() == 0:
                print(f"written to {folder}: {', '.join(FILES)}; next: python -m dcjax.gallery "
                      f"--workdir={Path(f.out)}, python -m dcjax.predict --workdir={Path(f.out)} "
                      f"--source=FOLDER --out=FILE.csv")
            return
        folder = export_checkpoint(f.workdir, f.step, f.out)
        if jax.process_index() == 0:
            print(f"written to {folder}: {', '.join(FILES)}")

    cli.run_command(argv, body)


def _define_flags() -> None:
    from absl import flags

    from dcjax import distributed

    flags.DEFINE_string("workdir", None, "The run's directory (checkpoints/, config.json).")
    flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).")
    flags.DEFINE_string("out", None, "Output folder (default: RUN/export, or RUN/export_step_N "
                        "with --step; with --init: the new folder, required).")
    flags.DEFINE_string("init", None, "A trained network (a dcjax.convert folder or a run) to "
                        "cluster --data with, without training.")
    flags.DEFINE_string("data", None, "With --init: the imported dataset to cluster.")
    flags.DEFINE_integer("k", 0, "With --init: clusters (0: one per 100 images).")
    flags.DEFINE_string("config", None, "With --init: a config file whose geometry (image size, "
                        "model) replaces the network's default.")
    distributed.define_flags()


if __name__ == "__main__":
    from absl import app

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    from dcjax import cli

    app.run(main, flags_parser=cli.parse_flags)
