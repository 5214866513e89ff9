r"""Clusters of new images under a run's saved clustering: `python -m dcjax.predict --workdir=RUN
--source=DIR_OR_FILES --out=FILE.csv [--features=FILE.npy] [--export=DIR]`.

Each image goes through what the run's own images went through (dcjax.pseudolabels): the
deterministic view, fc7 of the checkpoint the export was made from, the saved PCA-whitening and the
nearest saved centroid (RUN/export/clustering.npz, written by training or `dcjax.export`). The
source is a folder (every image under it, at any depth, by name), an image file, or a comma-separated
list of files. FILE.csv gets one row per image: path (relative to the folder, as `prepare` names
images, or as given for files), cluster, distance (Euclidean, PCA-whitened space). Files that cannot
be decoded are listed on stderr and left out; the others are still predicted. `--features` also
writes their fc7 features [n, fc_dim] float32 in the CSV's row order. Predicting a run's own
training images gives exactly their clusters in RUN/export/assignments.csv.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

import jax
import numpy as np

from dcjax.data.datasets import DataError


class FileSource:
    """Random access to image files as records {'image': bytes, 'label': -1}."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.paths[i].read_bytes(), "label": -1}


def list_images(source: str) -> list[tuple[str, Path]]:
    """(name, path) of each image of a folder (by extension, at any depth, hidden files aside;
    named relative to the folder), an image file, or a comma-separated list of files."""
    from dcjax.data.layout import is_image_name

    root = Path(source).expanduser()
    if root.is_dir():
        found = sorted(p for p in root.rglob("*") if p.is_file() and is_image_name(p.name)
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        return [(p.relative_to(root).as_posix(), p) for p in found]
    names = [s for s in source.split(",") if s]
    missing = [s for s in names if not Path(s).expanduser().is_file()]
    if missing:
        raise DataError(f"--source: no such file or folder: {', '.join(missing[:3])}")
    return [(s, Path(s).expanduser()) for s in names]


def readable(images: list[tuple[str, Path]]) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """The images that decode, and (name, reason) for those that do not."""
    from dcjax.data.images import decode_bytes, decode_error

    ok, bad = [], []
    for name, path in images:
        data = None
        try:
            data = path.read_bytes()
            decode_bytes(data)
            ok.append((name, path))
        except Exception as e:  # noqa: BLE001 - any decode failure is reported, not raised
            bad.append((name, decode_error(e, data)))
    return ok, bad


def predict(workdir: str, source: str, out: str, features: str | None = None,
            export: str | None = None) -> tuple[int, list[tuple[str, str]]]:
    """Writes `out` (and `features`); returns the number of images predicted and the skipped ones."""
    from dcjax.checkpoint import Checkpointer
    from dcjax.data import pipeline
    from dcjax.export import load_clustering
    from dcjax.features import extract
    from dcjax.pseudolabels import nearest_centroids
    from dcjax.runs import config_from_run, load_network
    from dcjax.sharding import default_mesh
    from dcjax.step import make_feature_fn

    saved = load_clustering(Path(export or Path(workdir) / "export") / "clustering.npz")
    config = config_from_run(workdir)
    if saved["k"] != config.clustering.k or saved["dataset"] != config.data.name:
        raise DataError(f"the export (k={saved['k']}, dataset {saved['dataset']!r}) is not of the "
                        f"run in {workdir} (k={config.clustering.k}, {config.data.name!r})")
    images, skipped = readable(list_images(source))
    if not images:
        raise DataError(f"--source={source}: no readable image ({len(skipped)} unreadable)")
    mesh = default_mesh()
    step = saved["checkpoint_step"]
    present = []
    if (Path(workdir) / "checkpoints").exists() or step is not None:
        ckpt = Checkpointer(Path(workdir) / "checkpoints")
        try:
            present = ckpt.steps()
        finally:
            ckpt.close()
    if step not in present and not (step is None and config.model.init):
        raise DataError(f"the export was made from checkpoint {step}, which {workdir}/checkpoints no "
                        f"longer holds (it has {present}): re-export with `python -m dcjax.export "
                        f"--workdir={workdir}`")
    net = load_network(config, workdir, "trained", step, mesh)
    fc7 = extract(jax.jit(make_feature_fn(net.model)), net.variables,
                  FileSource([p for _, p in images]), pipeline.view_config(config),
                  config.batch_size, net.model.feature_dim, mesh, pipeline.loader_options(config),
                  desc="predict").to_numpy()
    cluster, distance = nearest_centroids(fc7, saved["pca"], saved["centroids"],
                                          chunk_size=config.clustering.chunk_size, mesh=mesh)
    if jax.process_index() == 0:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "cluster", "distance"])
            for (name, _), c, d in zip(images, cluster, distance):
                w.writerow([name, int(c), f"{d:.6g}"])
        if features:
            np.save(features, fc7.astype(np.float32))
    return len(images), skipped


def main(argv: list[str]) -> None:
    from absl import flags

    from dcjax import cli

    f = flags.FLAGS

    def body() -> None:
        count, skipped = predict(f.workdir, f.source, f.out, f.features, f.export)
        for name, reason in skipped:
            print(f"skipped {name}: {reason}", file=sys.stderr)
        print(f"{count} image(s) written to {f.out}"
              + (f", {len(skipped)} unreadable skipped" if skipped else ""))

    cli.run_command(argv, body)


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "The run's directory (config.json, checkpoints/, export/).")
    flags.DEFINE_string("source", None, "A folder of images, an image file, or a comma-separated "
                        "list of files.")
    flags.DEFINE_string("out", None, "The CSV to write (path, cluster, distance).")
    flags.DEFINE_string("features", None, "Also write the fc7 features [n, fc_dim] to this .npy.")
    flags.DEFINE_string("export", None, "The export folder holding clustering.npz (default "
                        "RUN/export).")
    flags.mark_flags_as_required(["workdir", "source", "out"])


if __name__ == "__main__":
    from absl import app

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    from dcjax import cli

    app.run(main, flags_parser=cli.parse_flags)
