r"""Command line: `python -m dcjax.main --config=configs/<x>.py --workdir=DIR [--config.a.b=v ...]`.

Only parses flags and hands over to `dcjax.train.train_and_evaluate(config, workdir)`. Bad
configuration values and missing or damaged data stop with one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file (':arg' allowed).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a multi-process run "
                    "launched by hand; SLURM and Cloud TPU are detected without it.")
flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run (with "
                     "--coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])


def launched_as_several_processes() -> bool:
    """True under a multi-task SLURM step, a multi-worker Cloud TPU VM, or explicit flags."""
    if FLAGS.coordinator_address:
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ:
        return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def maybe_initialize_distributed() -> None:
    """jax.distributed.initialize() before anything touches a device, when several processes run."""
    if not launched_as_several_processes():
        return
    import jax

    if FLAGS.coordinator_address:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    else:
        jax.distributed.initialize()  # cluster auto-detection (SLURM, Cloud TPU)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # library INFO chatter hides the run's own output
    maybe_initialize_distributed()
    from dcjax.config_lib import ConfigError
    from dcjax.data.datasets import DataError
    from dcjax.train import Interrupted, train_and_evaluate

    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)


if __name__ == "__main__":
    app.run(main)
