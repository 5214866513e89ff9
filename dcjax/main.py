r"""Command line: `python -m dcjax.main --config=configs/<x>.py --workdir=DIR [--config.a.b=v ...]`.

Only parses flags and hands over to `dcjax.runner.train_and_evaluate(config, workdir)`. Exit codes
(docs/reliability.md): 0 done; 2 bad input (a flag, a config value, the workdir, the data, a config
that differs from the workdir's run), one line on stderr and nothing written; 3 the loss diverged
(the last checkpoint is kept); 4 the workdir's disk is full (the last checkpoint is kept; free space
and rerun to resume); 128 + signal number after SIGINT / SIGTERM (rerun to resume).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from dcjax import cli, distributed  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file (':arg' allowed).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and plots.")
distributed.define_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # library INFO chatter hides the run's own output
    workdir = cli.require_workdir(FLAGS.workdir)
    cli.use_compilation_cache()
    try:
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    except ValueError as e:
        cli.fail(str(e))
    from dcjax.checkpoint import CheckpointError
    from dcjax.config_lib import ConfigError
    from dcjax.data.datasets import DataError
    from dcjax.runner import train_and_evaluate
    from dcjax.stopping import EXIT_DIVERGED, EXIT_NO_SPACE, Diverged, Interrupted, NoSpace

    try:
        train_and_evaluate(FLAGS.config, workdir, given=FLAGS["config"].override_values)
    except (ConfigError, DataError, CheckpointError) as e:
        cli.fail(str(e))
    except Diverged as e:
        cli.fail(str(e), EXIT_DIVERGED)
    except NoSpace as e:
        cli.fail(str(e), EXIT_NO_SPACE)
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(128 + e.signum)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
