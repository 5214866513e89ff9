"""Training methods, selected by `config.method` (docs/design.md, "Runner and methods").

A method is a class with the hooks of `dcjax.methods.base.Method`, registered under a name:

    @methods.register("my_method")
    class MyMethod(Method): ...

The runner (dcjax/runner.py) owns the run's lifecycle (workdir, lock, resume, signals, checkpoints,
metrics, evaluators) and calls the method's hooks; adding a method is one module plus a config.
The built-in methods are imported on first lookup, so importing this package costs nothing.
"""

from __future__ import annotations

import importlib

from dcjax.config_lib import ConfigError

BUILT_IN = {"deepcluster": "dcjax.methods.deepcluster",
            "deepcluster_v2": "dcjax.methods.deepcluster_v2"}
_REGISTRY: dict[str, type] = {}


def register(name: str):
    """Class decorator: makes the class the method `config.method == name`."""

    def add(cls: type) -> type:
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return add


def get(name: str) -> type:
    """The method class registered as `name` (ConfigError naming the known ones otherwise)."""
    if name not in _REGISTRY and name in BUILT_IN:
        importlib.import_module(BUILT_IN[name])
    if name not in _REGISTRY:
        known = sorted(set(_REGISTRY) | set(BUILT_IN))
        raise ConfigError(f"config.method: {name!r} is not a method; known: {', '.join(known)}")
    return _REGISTRY[name]
