"""The data section's checks that need the input code: the decoder and the loader, and what each
needs installed (config_lib.validate_fields checks the rest of config.data)."""

from __future__ import annotations

import importlib.util

from dcjax.config_lib import require
from dcjax.data.dali_loader import available as dali_available
from dcjax.data.pipeline import DECODERS, LOADERS, check_views


def check_config(config) -> None:
    """config.data.decoder and loader; ConfigError naming the first bad one."""
    d = config.data
    require(d.decoder in DECODERS, f"config.data.decoder={d.decoder!r} must be one of {DECODERS}")
    require(d.decoder != "opencv" or importlib.util.find_spec("cv2") is not None,
            "config.data.decoder='opencv' needs OpenCV: pip install opencv-python-headless "
            "(requirements.txt), or set config.data.decoder='fast'")
    require(d.loader in LOADERS, f"config.data.loader={d.loader!r} must be one of {LOADERS}")
    require(d.loader != "dali" or dali_available(), "config.data.loader='dali' needs NVIDIA DALI: "
            "pip install nvidia-dali-cuda120 (or -cuda130), or -r requirements-dali.txt")
    check_views(config)
    require(d.loader != "dali" or not d.get("views", ()), "config.data.views: the DALI loader makes "
            "one view per image; multi-crop views need config.data.loader='grain'")
