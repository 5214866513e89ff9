r"""Print a run's per-epoch metrics as a Markdown table: `python -m dcjax.report --workdir=RUN`.

Columns that no epoch of the run has (the label metrics of an unlabeled dataset, the kNN probe
when it is off) are left out. `--signals` with one or more `--workdir`s prints instead, per run,
how the label-free signals (dcjax.quality: pixel_agreement, cohesion_median, nmi_prev) moved with
NMI against the labels over the epochs: their first and last values and Spearman's rank
correlation with nmi_labels, on labelled data sets, so that the signals can be judged where the
labels exist before they are trusted where they do not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags

from dcjax.writers import markdown_table

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("workdir", None, "A run's workdir (holds metrics.jsonl); several with "
                          "--signals.")
flags.DEFINE_bool("signals", False, "Compare the label-free signals with nmi_labels over the "
                  "epochs of each --workdir.")

COLUMNS = (("epoch", "d"), ("loss", ".3f"), ("nmi_labels", ".4f"), ("nmi_prev", ".4f"),
           ("ari_labels", ".4f"), ("acc_labels", ".4f"), ("pixel_agreement", ".3f"),
           ("cohesion_median", ".3f"), ("largest_cluster_frac", ".3f"),
           ("time_extract", ".1f"), ("time_pca", ".1f"), ("time_kmeans", ".1f"),
           ("time_train", ".1f"), ("train_images_per_sec", ".0f"), ("knn_top1", ".4f"))


SIGNALS = ("pixel_agreement", "cohesion_median", "nmi_prev")


def table(records: list[dict]) -> str:
    """The per-epoch table; a column no record has a value for is left out."""
    columns = [(name, fmt) for name, fmt in COLUMNS
               if any(r.get(name) is not None for r in records)]
    return markdown_table([name for name, _ in columns],
                          [["-" if r.get(name) is None else format(r[name], fmt)
                            for name, fmt in columns] for r in records])


def read_records(workdir: str | Path) -> list[dict]:
    path = Path(workdir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def signal_rows(workdir: str | Path) -> list[list[str]]:
    """Per label-free signal of a run: epochs, its first -> last value, nmi_labels' first -> last
    and Spearman's correlation of the two over the epochs that have both."""
    from scipy.stats import spearmanr

    records = read_records(workdir)
    rows = []
    for key in SIGNALS:
        pairs = [(r[key], r["nmi_labels"]) for r in records
                 if r.get(key) is not None and r.get("nmi_labels") is not None]
        if len(pairs) < 3:
            continue
        sig, nmi = zip(*pairs)
        rho = spearmanr(sig, nmi).statistic
        rows.append([Path(workdir).name, key, str(len(pairs)), f"{sig[0]:.3f} -> {sig[-1]:.3f}",
                     f"{nmi[0]:.3f} -> {nmi[-1]:.3f}", "-" if rho != rho else f"{rho:+.2f}"])
    return rows


def signals_table(workdirs: list[str]) -> str:
    rows = [row for w in workdirs for row in signal_rows(w)]
    return markdown_table(["run", "signal", "epochs", "signal first -> last",
                           "nmi_labels first -> last", "Spearman with nmi_labels"], rows)


def report(workdir: str | Path) -> str:
    """The per-epoch table of a run and its final comparison ('-' where a value is absent, as on
    an unlabeled dataset)."""
    records = read_records(workdir)
    out = [table(records)]
    summary = Path(workdir) / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        extra = {k: v for k, v in s.items() if k.startswith(("final_", "pixel_", "random_init_"))}
        if extra:
            out.append("\n" + ", ".join(f"{k} = {'-' if v is None else format(v, '.4f')}"
                                        for k, v in extra.items()))
        if "final_nmi_labels" in s and s["final_nmi_labels"] is None:
            out.append("(the dataset has no labels: the label metrics are '-')")
    return "\n".join(out)


def main(argv):
    del argv
    for workdir in FLAGS.workdir:
        path = Path(workdir) / "metrics.jsonl"
        if not path.exists():
            print(f"error: {path} does not exist", file=sys.stderr)
            sys.exit(2)
    if FLAGS.signals:
        print(signals_table(FLAGS.workdir))
        return
    if len(FLAGS.workdir) > 1:
        print("error: give one --workdir (several only with --signals)", file=sys.stderr)
        sys.exit(2)
    print(report(FLAGS.workdir[0]))


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    from dcjax import cli

    app.run(main, flags_parser=cli.parse_flags)
