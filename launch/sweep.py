r"""Grid sweeps over absl config overrides, run one after another here or printed for a scheduler.

    python launch/sweep.py --config=configs/cifar10.py:cpu --root=runs/ksweep \
        --sweep='clustering.k=10,100,1000' [--sweep='optim.lr=0.01,0.05'] \
        [--eval=linear,knn] [--set=num_epochs=6] [--print_only]

Every combination of the --sweep values (their product) becomes one run in ROOT/<key>=<value>_...,
trained with `python -m dcjax.main` and then evaluated with `python -m dcjax.evaluate` for each
protocol in --eval. A run or evaluation whose result file already exists is skipped, so rerunning
the same command resumes an interrupted sweep. At the end each run's final metrics are collected
into ROOT/sweep.csv and ROOT/sweep.md (and, for a single swept field, ROOT/sweep.png).
--print_only prints the commands (one line each, to paste into a job array or scheduler) and runs
nothing; --collect_only only builds the tables.
"""

from __future__ import annotations

import csv
import itertools
import json
import shlex
import subprocess
import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dcjax.writers import markdown_table  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Config file (with ':arg'), as for dcjax.main.")
flags.DEFINE_string("root", None, "Directory holding one workdir per combination.")
flags.DEFINE_multi_string("sweep", [], "'path=v1,v2,...': values of one config field.")
flags.DEFINE_multi_string("set", [], "'path=value': an override shared by every run.")
flags.DEFINE_list("eval", [], "Protocols to run after training (linear, linear_translate, "
                  "linear_center, knn, clustering); linear_translate is the probe on the reference's "
                  "shifted views, linear_center the fast centre-view probe.")
flags.DEFINE_bool("print_only", False, "Print the commands instead of running them.")
flags.DEFINE_bool("collect_only", False, "Only collect existing results into the tables.")
flags.DEFINE_string("python", sys.executable, "Interpreter for the runs.")

PROTOCOLS = ("linear", "linear_translate", "linear_center", "knn", "clustering")
# The evaluate arguments of each protocol (the linear probe's views are set explicitly, so that a
# --set on the run's config cannot send its result to another file).
EVAL_ARGS = {"linear": ["--protocol=linear", "--config.eval.linear_views=augmented"],
             "linear_translate": ["--protocol=linear", "--config.eval.linear_views=translate"],
             "linear_center": ["--protocol=linear", "--config.eval.linear_views=center"],
             "knn": ["--protocol=knn"], "clustering": ["--protocol=clustering"]}


def parse_axis(spec: str) -> tuple[str, list[str]]:
    key, sep, values = spec.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not items:
        raise app.UsageError(f"--sweep={spec!r}: expected 'path=v1,v2,...'")
    return key.strip(), items


def combinations(axes: list[tuple[str, list[str]]]) -> list[dict[str, str]]:
    keys = [k for k, _ in axes]
    return [dict(zip(keys, values)) for values in itertools.product(*[v for _, v in axes])]


def run_name(combo: dict[str, str]) -> str:
    name = "_".join(f"{k}={v}" for k, v in combo.items()) or "base"
    return "".join(ch if ch.isalnum() or ch in "._=-" else "-" for ch in name)


def commands(python: str, config: str, workdir: Path, combo: dict[str, str], shared: list[str],
             protocols: list[str]) -> list[tuple[list[str], Path]]:
    """[(argv, the file whose existence means it is done)] for one run: train, then evaluations."""
    overrides = [f"--config.{s}" for s in shared] + [f"--config.{k}={v}" for k, v in combo.items()]
    out = [([python, "-m", "dcjax.main", f"--config={config}", f"--workdir={workdir}", *overrides],
            workdir / "summary.json")]
    for protocol in protocols:
        out.append(([python, "-m", "dcjax.evaluate", f"--workdir={workdir}", *EVAL_ARGS[protocol]],
                     workdir / "eval" / f"{protocol}.json"))
    return out


def collect(workdir: Path, combo: dict[str, str]) -> dict:
    """One table row: the overrides, the final clustering metrics and the evaluations found."""
    row: dict = dict(combo)
    summary = workdir / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        for key in ("epoch", "final_nmi_labels", "final_clusters_nmi_labels", "nmi_prev",
                    "nonempty_clusters"):
            row[key] = s.get(key)
    knn = workdir / "eval" / "knn.json"
    if knn.exists():
        for name, v in json.loads(knn.read_text())["features"].items():
            row[f"knn_{name}"] = v
    for prefix in ("linear", "linear_translate", "linear_center", "linear_reference"):
        linear = workdir / "eval" / f"{prefix}.json"
        if linear.exists():
            layers = json.loads(linear.read_text())["layers"]
            for name, r in layers.items():
                row[f"{prefix}_{name}"] = r["top1"]
            best = max(layers, key=lambda n: layers[n]["top1"])
            row[f"{prefix}_best_layer"], row[f"{prefix}_best"] = best, layers[best]["top1"]
    clustering = workdir / "eval" / "clustering.json"
    if clustering.exists():
        row["test_nmi"] = json.loads(clustering.read_text())["nmi"]
    return row


def write_tables(root: Path, rows: list[dict]) -> tuple[Path, Path]:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(root / "sweep.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)

    def cell(v):
        return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    table = markdown_table(columns, [[cell(r.get(c)) for c in columns] for r in rows])
    (root / "sweep.md").write_text(table + "\n")
    return root / "sweep.csv", root / "sweep.md"


def plot(root: Path, key: str, rows: list[dict]) -> Path | None:
    """ROOT/sweep.png: the final metrics against the one swept field (log axis when numeric)."""
    metrics = [("linear_best", "linear probe, best layer"),
               ("linear_translate_best", "probe on shifted views, best layer"),
               ("linear_center_best", "centre-view probe, best layer"), ("knn_fc7", "kNN top-1, fc7"),
               ("final_nmi_labels", "NMI(k-means, k = classes, of final fc7, labels)")]
    present = [(m, label) for m, label in metrics if any(r.get(m) is not None for r in rows)]
    if not present:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        xs = [float(r[key]) for r in rows]
        numeric = all(x > 0 for x in xs)
    except ValueError:
        xs, numeric = list(range(len(rows))), False
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.4), squeeze=False)
    for ax, (m, label) in zip(axes[0], present):
        points = [(x, r[m]) for x, r in zip(xs, rows) if r.get(m) is not None]
        ax.plot(*zip(*points), marker="o")
        if numeric:
            ax.set_xscale("log")
        else:
            ax.set_xticks(xs, [r[key] for r in rows])
        ax.set_xlabel(key)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(root / "sweep.png", dpi=100)
    plt.close(fig)
    return root / "sweep.png"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.config or not FLAGS.root:
        raise app.UsageError("--config and --root are required")
    unknown = [p for p in FLAGS.eval if p not in PROTOCOLS]
    if unknown:
        raise app.UsageError(f"--eval={','.join(unknown)}: protocols are {', '.join(PROTOCOLS)}")
    for spec in FLAGS.set:
        if "=" not in spec:
            raise app.UsageError(f"--set={spec!r}: expected 'path=value'")
    root = Path(FLAGS.root)
    combos = combinations([parse_axis(s) for s in FLAGS.sweep])
    rows = []
    for combo in combos:
        workdir = root / run_name(combo)
        if not FLAGS.collect_only:
            for argv_, done in commands(FLAGS.python, FLAGS.config, workdir, combo, FLAGS.set,
                                        FLAGS.eval):
                if FLAGS.print_only:
                    print(shlex.join(argv_))
                    continue
                if done.exists():
                    print(f"done already: {done}")
                    continue
                print(f"running: {shlex.join(argv_)}", flush=True)
                code = subprocess.call(argv_)
                if code != 0:
                    print(f"error: exit code {code} from {shlex.join(argv_)}; rerun this sweep to "
                          f"resume", file=sys.stderr)
                    sys.exit(code)
        rows.append(collect(workdir, combo))
    if FLAGS.print_only:
        return
    root.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = write_tables(root, rows)
    written = [str(csv_path), str(md_path)]
    if len(FLAGS.sweep) == 1:
        png = plot(root, parse_axis(FLAGS.sweep[0])[0], rows)
        written += [str(png)] if png else []
    print(md_path.read_text(), end="")
    print(f"written: {', '.join(written)}")


if __name__ == "__main__":
    app.run(main)
