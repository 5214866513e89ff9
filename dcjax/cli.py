"""Command-line parsing shared by the entry points: a bad flag is one line on stderr and exit 2.

`app.run(main, flags_parser=parse_flags)` replaces absl's parser, which prints a traceback for the
mistakes users make most: an unknown `--config.a.b` field, a config file that is missing or raises.
Here each becomes one sentence naming the flag (and the closest valid field names) or the file and
line.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import traceback
from pathlib import Path

from absl import flags

FLAGS = flags.FLAGS
EXIT_USAGE = 2  # bad input: nothing was written
_OVERRIDE = re.compile(r"^--(config\.[\w.]+)(=.*)?$")


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """Prints `error: message` (one line) on stderr and exits with `code`."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(code)


def use_compilation_cache() -> None:
    """JAX's persistent compilation cache in `<dcjax cache>/jax` ($DCJAX_CACHE_DIR, else
    $XDG_CACHE_HOME/dcjax, else ~/.cache/dcjax): a command's second call loads the programs the
    first one compiled instead of compiling them again. $DCJAX_COMPILATION_CACHE=0 turns it off.
    Call before anything is compiled."""
    if os.environ.get("DCJAX_COMPILATION_CACHE", "1") == "0":
        return
    import jax

    from dcjax.data.jpeg_region import cache_dir

    jax.config.update("jax_compilation_cache_dir", str(cache_dir() / "jax"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def run_command(argv: list[str], body) -> None:
    """The frame of a per-run command's `main`: no positional arguments, absl logging at WARNING
    unless --verbosity is given, and a bad value (ConfigError, DataError: both ValueErrors) as one
    `error:` line with exit code 2."""
    from absl import logging

    if len(argv) > 1:
        fail(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    use_compilation_cache()
    try:
        body()
    except ValueError as e:
        fail(str(e))


def config_fields(config, prefix: str = "") -> list[str]:
    """Every leaf field of a ConfigDict as a dotted path ('clustering.k', ...)."""
    import ml_collections

    out = []
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out += config_fields(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


def _config_spec(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            return a.split("=", 1)[1]
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _load(spec: str):
    """The ConfigDict of `--config=path[:arg]`; raises with a one-line message."""
    from dcjax.config_lib import load_config_file

    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise ValueError(f"--config={spec}: the config file {path} does not exist")
    try:
        return load_config_file(path, arg or None)
    except Exception as e:  # noqa: BLE001 - whatever the file raises is reported with its line
        frames = [f for f in traceback.extract_tb(e.__traceback__)
                  if Path(f.filename).resolve() == Path(path).resolve()]
        where = f"{path}, line {frames[-1].lineno}" if frames else path
        raise ValueError(f"--config={spec}: the config file raised {type(e).__name__}: {e} "
                         f"({where})") from None


def diagnose(argv: list[str]) -> str | None:
    """The first problem with `--config` and its `--config.a.b` overrides, or None."""
    spec = _config_spec(argv)
    if spec is None:
        return None
    try:
        config = _load(spec)
    except ValueError as e:
        return str(e)
    fields = config_fields(config)
    sections = {f.rpartition(".")[0] for f in fields}
    for a in argv:
        m = _OVERRIDE.match(a)
        if m is None:
            continue
        path = m.group(1).removeprefix("config.")
        if path in fields or path in sections:
            continue
        close = difflib.get_close_matches(path, fields, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('config.' + c for c in close)}?" if close else \
            f"; fields are listed in {spec.partition(':')[0]} and dcjax/config_lib.py"
        return f"--config.{path}: config has no field {path!r}{hint}"
    return None


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with one-line errors (exit 2) instead of tracebacks."""
    problem = diagnose(argv)
    if problem is not None:
        fail(problem)
    try:
        return FLAGS(argv)
    except flags.Error as e:
        fail(f"{e} (pass --helpfull to list the flags)")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        fail(f"bad flag value: {e}")
    return []  # not reached


def require_workdir(value: str | None) -> str:
    """The --workdir flag, refused when missing or empty."""
    if value is None or not value.strip():
        fail("--workdir is empty: give the directory for this run's checkpoints and metrics "
             "(e.g. --workdir=runs/digits)")
    return value
