"""`validate(config, num_devices)`: every check a config gets before any work (docs/reliability.md,
"Order of checks"). config_lib checks the values no component owns; each component checks its own
section's allowed values, which it defines: models (architecture, geometry, dtype), clustering
(backend, precision, sampler), the view cache, the data loaders, the evaluation settings.
"""

from __future__ import annotations

import ml_collections

from dcjax import clustering as clustering_checks
from dcjax import config_lib, models, view_cache
from dcjax.data import checks as data_checks
from dcjax.evaluate import settings as eval_checks


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
    """Checks the values that need no data; raises ConfigError naming the first bad field."""
    models.check_config(config)
    config_lib.validate_fields(config, num_devices)
    clustering_checks.check_config(config)
    view_cache.check_config(config)
    data_checks.check_config(config)
    eval_checks.check_config(config, num_devices)
