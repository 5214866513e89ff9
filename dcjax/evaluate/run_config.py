"""Config file that loads a run's own config: `--config=dcjax/evaluate/run_config.py:RUN_DIR`.

`python -m dcjax.evaluate` uses it when no --config is given, so `--config.eval.x=...` overrides
apply to the config the run was trained with.
"""

from dcjax.runs import config_from_run


def get_config(workdir: str):
    return config_from_run(workdir)
