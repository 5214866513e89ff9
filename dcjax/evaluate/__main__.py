r"""`python -m dcjax.evaluate --workdir=RUN --protocol=linear|knn|clustering [--init=random]
[--features=pixels] [--step=N] [--config=FILE] [--config.eval.x=...]`.

Evaluates a run's latest (or --step) checkpoint with the run's own config (RUN/config.json, or
--config), writes RUN/eval/<protocol>[_random|_pixels].json and prints a table. `--init=random`
evaluates the same architecture at its initialisation, `--features=pixels` raw pixels, so every
table has its baselines beside it; `python -m dcjax.evaluate.table --workdir=RUN` gathers them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dcjax import distributed  # noqa: E402

PROTOCOLS = ("linear", "knn", "clustering")
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A configs/*.py file; default: the run's own "
                                "config (RUN/config.json).", lock_config=True)
flags.DEFINE_string("workdir", None, "The run's directory (checkpoints/, config.json).")
flags.DEFINE_enum("protocol", None, PROTOCOLS, "What to measure.")
flags.DEFINE_enum("init", "trained", ["trained", "random"], "The run's checkpoint, or the same "
                  "architecture at its initialisation (the paper's 'random' row).")
flags.DEFINE_enum("features", "network", ["network", "pixels"], "Network features or raw pixels.")
flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
distributed.define_flags()
flags.mark_flags_as_required(["workdir", "protocol"])


def result_name(protocol: str, init: str, features: str) -> str:
    if features == "pixels":
        return f"{protocol}_pixels"
    return protocol if init == "trained" else f"{protocol}_{init}"


def format_result(protocol: str, result: dict) -> str:
    if protocol == "linear":
        lines = ["| layer | dim | pooling | top-1 |", "|---|---|---|---|"]
        lines += [f"| {name} | {r['dim']} | {r['pooling']} | {100 * r['top1']:.2f} |"
                  for name, r in result["layers"].items()]
    elif protocol == "knn":
        lines = [f"| features | kNN top-1 (k={result['k']}, {result['weights']}) |", "|---|---|"]
        lines += [f"| {name} | {100 * v:.2f} |" for name, v in result["features"].items()]
    else:
        lines = ["| features | k | NMI | ARI | accuracy |", "|---|---|---|---|---|",
                 f"| {result['features']} | {result['k']} | {result['nmi']:.4f} | "
                 f"{result['ari']:.4f} | {100 * result['accuracy']:.2f} |"]
    return "\n".join(lines)


def evaluate(config, workdir: str, protocol: str, init: str = "trained", features: str = "network",
             step: int | None = None) -> dict:
    import jax

    from dcjax.clustering.sharding import default_mesh
    from dcjax.evaluate import common, linear, protocols

    mesh = default_mesh()
    splits = common.open_splits(config)
    net = None
    if features == "network":
        net = common.load_network(config, workdir, init, step, mesh)
    if protocol == "linear":
        result = (linear.pixel_probe(config, splits, mesh) if net is None
                  else linear.linear_probe(config, net, splits, mesh))
    elif protocol == "knn":
        result = protocols.knn_protocol(config, net, splits, mesh)
    else:
        result = protocols.clustering_protocol(config, net, splits, mesh)
    result = {"protocol": protocol, "init": init if net is not None else None,
              "features": features, "checkpoint_step": net.step if net is not None else None,
              "dataset": config.data.name, "eval_split": config.data.eval_split,
              "devices": jax.device_count(), **result}
    path = common.write_result(workdir, result_name(protocol, init, features), result)
    if jax.process_index() == 0:
        print(format_result(protocol, result))
        print(f"written to {path}")
    return result


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from dcjax.config_lib import ConfigError
    from dcjax.data.datasets import DataError

    try:
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        evaluate(FLAGS.config, FLAGS.workdir, FLAGS.protocol, FLAGS.init, FLAGS.features, FLAGS.step)
    except (ConfigError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def with_run_config(argv: list[str]) -> list[str]:
    """argv plus `--config=<run_config.py>:<workdir>` when no --config was given."""
    if any(a == "--config" or a.startswith("--config=") for a in argv):
        return argv
    workdir = next((a.split("=", 1)[1] for a in argv if a.startswith("--workdir=")), None)
    if workdir is None and "--workdir" in argv[:-1]:
        workdir = argv[argv.index("--workdir") + 1]
    if workdir is None:
        return argv
    if not (Path(workdir) / "config.json").exists():
        print(f"error: {Path(workdir) / 'config.json'} does not exist: --workdir must be a run's "
              f"directory, or give --config", file=sys.stderr)
        sys.exit(2)
    # First, so that the --config.x=... overrides after it find their flags defined.
    return [argv[0], f"--config={Path(__file__).with_name('run_config.py')}:{workdir}", *argv[1:]]


if __name__ == "__main__":
    app.run(main, argv=with_run_config(sys.argv))
