"""Pieces the benchmark scripts share: the machine's description and timed jitted steps."""

from __future__ import annotations

import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np


def machine() -> str:
    dev = jax.devices()[0]
    kind = dev.device_kind if dev.platform != "cpu" else platform.processor() or "cpu"
    return f"{jax.device_count()} x {dev.platform} ({kind}), {os.cpu_count()} host cores"


def seconds_per_call(fn, steps: int) -> float:
    """Seconds per call of `fn` (which returns something to block on), after 2 warm-up calls."""
    for _ in range(2):
        jax.block_until_ready(fn())
    t = time.perf_counter()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / steps


def network_rates(name: str, size: int, batch: int, k: int, steps: int, *, widths=None,
                  fc_dim: int = 4096, dtype: str = "float32", bn_variance: str = "fast",
                  extraction: bool = False) -> tuple[float, float | None]:
    """(train images/s, fc7 extraction images/s or None) of architecture `name` on one device:
    the jitted train step (forward + backward + SGD, BatchNorm, Sobel, k-way head) and the
    eval-mode forward, on a fixed synthetic uint8 batch."""
    from dcjax.config_lib import base_config
    from dcjax.models import create_model
    from dcjax.step import create_train_state, make_feature_fn, make_train_step

    config = base_config()
    config.data.image_size = size
    config.model.dtype = dtype
    model = create_model(name, k, image_size=size, widths=widths, fc_dim=fc_dim,
                         dtype=jnp.dtype(dtype), bn_two_pass=bn_variance == "two_pass")
    state = create_train_state(model, config, jax.random.key(0))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 255, (batch, size, size, 3), dtype=np.uint8))
    labels = jnp.asarray(rng.integers(0, k, batch).astype(np.int32))
    key = jax.random.key(1)

    extract_ips = None
    if extraction:
        feature_fn = jax.jit(make_feature_fn(model))
        extract_ips = batch / seconds_per_call(
            lambda: feature_fn(state.params, state.batch_stats, images), steps)

    step = jax.jit(make_train_step(model, config), donate_argnums=0)
    holder = [state]

    def train():
        holder[0], metrics = step(holder[0], images, labels, key)
        return metrics

    return batch / seconds_per_call(train, steps), extract_ips
