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

The library is dcjax/data/importer.py (`prepare`, `ensure_embedded`), reading the sources of
dcjax/data/sources.py through the layouts of dcjax/data/layout.py; this module is the command line.
"""

from __future__ import annotations

import os

from dcjax.data.importer import ensure_embedded, prepare
from dcjax.data.layout import LAYOUTS

__all__ = ["ensure_embedded", "prepare"]


def main(argv: list[str]) -> None:
    from absl import flags

    from dcjax import cli

    f = flags.FLAGS
    class_names = [c for c in (f.class_names or "").split(",") if c] or None
    cli.run_command(argv, lambda: prepare(
        f.source, f.name, f.data_dir, f.overwrite, class_names, resize_shorter=f.resize_shorter,
        layout=f.layout, holdout=f.holdout, seed=f.seed))


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
