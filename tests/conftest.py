"""Test set-up: 4 fake CPU devices, a private data dir, and the shared real data when present."""

import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session", autouse=True)
def data_dir(tmp_path_factory) -> str:
    """A fresh TFDS data dir for the whole session (the embedded digits get imported into it)."""
    path = str(tmp_path_factory.mktemp("tfds"))
    os.environ["DCJAX_DATA_DIR"] = path
    from dcjax.data.importer import ensure_embedded

    ensure_embedded("digits", path)
    return path


def make_config(file: str = "digits", arg: str | None = "smoke", **overrides):
    """`configs/<file>.py:<arg>` with dotted-path overrides: make_config(**{"clustering.k": 5})."""
    from dcjax.config_lib import load_config_file

    c = load_config_file(str(ROOT / "configs" / f"{file}.py"), arg)
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        (c[section] if section else c)[field] = value
    return c


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (real data from ../shared/data)")
    return path
