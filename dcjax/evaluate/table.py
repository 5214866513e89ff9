r"""The paper's Table 1 for one run, from its eval/*.json: `python -m dcjax.evaluate.table --workdir=RUN`.

Rows: DeepCluster (the run's checkpoint), random init (`--init=random`), raw pixels
(`--features=pixels`); columns: linear-probe top-1 of each conv layer (pixels: one column), kNN top-1
on fc7 and PCA-whitened fc7, NMI of k-means with k = #classes on the held-out split (the clustering
protocol: PCA-whitened, one initialisation) and the end-of-run comparison's NMI (eval/comparison.json
from `--protocol=comparison`: L2-normalised fc7, mean of 10 initialisations; one file fills the three
rows). Missing
evaluations print as '-'. `--linear_views=center` takes the conv columns from the centre-view probe
(`--config.eval.linear_views=center`, eval/linear_center*.json) instead of the paper's,
`--linear_views=translate` from the probe on the reference's shifted views (eval/linear_translate*.json),
`--linear_views=reference` from the reference protocol (`--config.eval.protocol=reference`,
eval/linear_reference*.json). `--best` shows each probe's best tested epoch (selected on the test
split, as the paper reports it) instead of its last.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags

from dcjax.evaluate.run import result_name
from dcjax.writers import markdown_table

# (label, init, features) of each row; its files are named by `result_name`, as evaluate writes them.
ROWS = (("DeepCluster", "trained", "network"), ("random init", "random", "network"),
        ("raw pixels", "trained", "pixels"))


def _load(workdir: Path, name: str) -> dict | None:
    path = workdir / "eval" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(workdir: str | Path, linear_views: str = "augmented", best: bool = False) -> str:
    workdir = Path(workdir)
    layers: list[str] = []
    for _, init, features in ROWS:
        lin = _load(workdir, result_name("linear", init, features, linear_views))
        for name in (lin or {}).get("layers", {}):
            if name not in layers and name != "pixels":
                layers.append(name)
    mark = " (best on test)" if best else ""
    header = ["features", *(f"{name}{mark}" for name in layers), f"linear on pixels{mark}", "kNN",
              "kNN (PCA-whitened)", "k-means NMI", "comparison NMI"]
    comparison = _load(workdir, result_name("comparison", "trained", "network")) or {}
    comparison_rows = {"trained": "deepcluster", "random": "random_init", "pixels": "pixels"}
    rows = []
    for label, init, features in ROWS:
        lin = _load(workdir, result_name("linear", init, features, linear_views))
        knn, clu = (_load(workdir, result_name(p, init, features)) for p in ("knn", "clustering"))
        cells = [label]
        for name in [*layers, "pixels"]:
            r = (lin or {}).get("layers", {}).get(name)
            v = None if r is None else r.get("best_top1") if best else r["top1"]
            cells.append("-" if v is None else f"{100 * v:.2f}")
        feats = (knn or {}).get("features", {})
        raw = [v for k, v in feats.items() if not k.endswith("_pca_whitened")]
        white = [v for k, v in feats.items() if k.endswith("_pca_whitened")]
        cells.append(f"{100 * raw[0]:.2f}" if raw else "-")
        cells.append(f"{100 * white[0]:.2f}" if white else "-")
        cells.append(f"{clu['nmi']:.4f}" if clu else "-")
        compared = comparison.get(comparison_rows["pixels" if features == "pixels" else init])
        cells.append(f"{compared['nmi']:.4f}" if compared else "-")
        rows.append(cells)
    return markdown_table(header, rows)


def main(argv):
    del argv
    workdir = Path(flags.FLAGS.workdir)
    if not (workdir / "eval").is_dir():
        print(f"error: {workdir / 'eval'} does not exist: run python -m dcjax.evaluate first",
              file=sys.stderr)
        sys.exit(2)
    print(table(workdir, flags.FLAGS.linear_views, flags.FLAGS.best))


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "A run's directory with eval/*.json.")
    flags.DEFINE_enum("linear_views", "augmented", ["augmented", "translate", "center", "reference"],
                      "Which linear probe fills the conv columns.")
    flags.DEFINE_bool("best", False, "Each probe's best tested epoch (chosen on the test split) "
                      "instead of its last.")
    flags.mark_flag_as_required("workdir")
    app.run(main)
