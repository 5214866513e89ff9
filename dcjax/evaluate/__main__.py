r"""`python -m dcjax.evaluate --workdir=RUN --protocol=linear|knn|clustering|comparison [--init=random]
[--features=pixels] [--step=N] [--config=FILE] [--config.eval.x=...]`.

Evaluates a run's latest (or --step) checkpoint with the run's own config (RUN/config.json, or
--config), writes RUN/eval/<protocol>[_random|_pixels].json and prints a table. `--init=random`
evaluates the same architecture at its initialisation, `--features=pixels` raw pixels, so every
table has its baselines beside it; `python -m dcjax.evaluate.table --workdir=RUN` gathers them.
`--protocol=comparison` is the end-of-run comparison (k-means with k = the classes on the held-out
split: the network, its random initialisation and the raw pixels) for any checkpoint.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dcjax import cli, distributed  # noqa: E402
from dcjax.evaluate.evaluators import TYPES  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A configs/*.py file; default: the run's own "
                                "config (RUN/config.json).", lock_config=True)
flags.DEFINE_string("workdir", None, "The run's directory (checkpoints/, config.json).")
flags.DEFINE_enum("protocol", None, list(TYPES), "What to measure (an evaluator type).")
flags.DEFINE_string("init", "trained", "'trained' (the run's checkpoint), 'random' (the same "
                    "architecture at its initialisation: the paper's 'random' row), or a folder "
                    "written by python -m dcjax.convert (e.g. the official released network).")
flags.DEFINE_enum("features", "network", ["network", "pixels"], "Network features or raw pixels.")
flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
distributed.define_flags()
flags.mark_flags_as_required(["workdir", "protocol"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from dcjax.config_lib import ConfigError
    from dcjax.data.datasets import DataError
    from dcjax.evaluate.run import evaluate

    cli.use_compilation_cache()

    try:
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        evaluate(FLAGS.config, FLAGS.workdir, FLAGS.protocol, FLAGS.init, FLAGS.features, FLAGS.step,
                 given=FLAGS["config"].override_values)
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
    app.run(main, argv=with_run_config(sys.argv), flags_parser=cli.parse_flags)
