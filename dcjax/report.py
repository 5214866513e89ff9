r"""Print a run's per-epoch metrics as a Markdown table: `python -m dcjax.report --workdir=RUN`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags

from dcjax.writers import markdown_table

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A run's workdir (holds metrics.jsonl).")

COLUMNS = (("epoch", "d"), ("loss", ".3f"), ("nmi_labels", ".4f"), ("nmi_prev", ".4f"),
           ("ari_labels", ".4f"), ("acc_labels", ".4f"), ("largest_cluster_frac", ".3f"),
           ("time_extract", ".1f"), ("time_pca", ".1f"), ("time_kmeans", ".1f"),
           ("time_train", ".1f"), ("train_images_per_sec", ".0f"), ("knn_top1", ".4f"))


def table(records: list[dict]) -> str:
    return markdown_table([name for name, _ in COLUMNS],
                          [["-" if r.get(name) is None else format(r[name], fmt)
                            for name, fmt in COLUMNS] for r in records])


def report(workdir: str | Path) -> str:
    """The per-epoch table of a run and its final comparison ('-' where a value is absent, as on
    an unlabeled dataset)."""
    path = Path(workdir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
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
    path = Path(FLAGS.workdir) / "metrics.jsonl"
    if not path.exists():
        print(f"error: {path} does not exist", file=sys.stderr)
        sys.exit(2)
    print(report(FLAGS.workdir))


if __name__ == "__main__":
    flags.mark_flag_as_required("workdir")
    from dcjax import cli

    app.run(main, flags_parser=cli.parse_flags)
