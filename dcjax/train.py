"""`train_and_evaluate(config, workdir)`: a training run (the runner, dcjax/runner.py, driving the
method `config.method`, dcjax/methods/). Kept as the stable import path of the Python API."""

from dcjax.runner import time_left, train_and_evaluate

__all__ = ["train_and_evaluate", "time_left"]
