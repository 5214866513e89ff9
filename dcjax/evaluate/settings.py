"""The values config.eval may take, checked here because the evaluation code owns them (the shared
defaults live in config_lib.base_config; each config.evals entry may override them,
evaluate/evaluators.py)."""

from __future__ import annotations

import ml_collections

from dcjax.config_lib import finite, positive_int, require
from dcjax.evaluate.knn import WEIGHTS as KNN_WEIGHTS

LINEAR_VIEWS = ("augmented", "translate", "center")  # config.eval.linear_views
LINEAR_SCHEDULES = ("cosine", "reference")  # config.eval.linear_schedule
LINEAR_TEST_VIEWS = ("center", "ten_crop")  # config.eval.linear_test_views
EVAL_PROTOCOLS = ("dcjax", "reference")  # config.eval.protocol


def check_config(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
    """config.eval's values (and eval_every_epochs); ConfigError naming the first bad one."""
    e = config.eval
    for path in ("eval.batch_size", "eval.linear_epochs", "eval.probe_dim", "eval.pixel_pca_dim",
                 "eval.knn_k"):
        positive_int(config, path)
    positive_int(config, "eval_every_epochs", minimum=0)
    require(e.batch_size % num_devices == 0,
             f"config.eval.batch_size={e.batch_size} is not divisible by the {num_devices} devices")
    require(finite(e.linear_lr) and e.linear_lr > 0,
             f"config.eval.linear_lr={e.linear_lr} must be a positive finite number")
    require(finite(e.linear_weight_decay) and e.linear_weight_decay >= 0,
             f"config.eval.linear_weight_decay={e.linear_weight_decay} must be a non-negative "
             "finite number")
    require(0 <= e.linear_momentum < 1,
             f"config.eval.linear_momentum={e.linear_momentum} must be in [0, 1)")
    lo_s, hi_s = tuple(e.crop_scale)
    require(0.0 < lo_s <= hi_s <= 1.0,
             f"config.eval.crop_scale={tuple(e.crop_scale)} must satisfy 0 < min <= max <= 1")
    require(e.linear_views in LINEAR_VIEWS,
             f"config.eval.linear_views={e.linear_views!r} must be one of {LINEAR_VIEWS}")
    require(e.linear_schedule in LINEAR_SCHEDULES,
             f"config.eval.linear_schedule={e.linear_schedule!r} must be one of {LINEAR_SCHEDULES}")
    require(e.knn_weights in KNN_WEIGHTS,
             f"config.eval.knn_weights={e.knn_weights!r} must be one of {KNN_WEIGHTS}")
    require(e.protocol in EVAL_PROTOCOLS,
             f"config.eval.protocol={e.protocol!r} must be one of {EVAL_PROTOCOLS}")
    require(e.linear_test_views in LINEAR_TEST_VIEWS,
             f"config.eval.linear_test_views={e.linear_test_views!r} must be one of "
             f"{LINEAR_TEST_VIEWS}")
    require(not (e.linear_test_views == "ten_crop" and e.linear_views == "center"),
             "config.eval.linear_test_views='ten_crop' needs probes that see images "
             "(config.eval.linear_views 'augmented' or 'translate'), not the cached centre views")
    positive_int(config, "eval.linear_test_every", minimum=0)
