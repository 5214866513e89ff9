"""Model registry: architectures by name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dcjax.models.alexnet import IMAGENET_CONVS, SMALL_WIDTHS, AlexNet, ConvSpec, small_convs
from dcjax.models.sobel import sobel_filter
from dcjax.models.vgg import VGG16

# name -> the input sizes (pixels, inclusive range) the architecture's geometry is made for.
ARCHITECTURES: dict[str, tuple[int, int]] = {
    "alexnet": (224, 224),
    "alexnet_small": (28, 64),
    "vgg16": (224, 224),
}


def create_model(
    name: str,
    num_classes: int,
    *,
    image_size: int,
    sobel: bool = True,
    fc_dim: int = 4096,
    widths: Sequence[int] | None = None,
    dropout: float = 0.5,
    dtype: Any = jnp.float32,
    bn_two_pass: bool = False,
) -> nn.Module:
    """Builds the architecture `name` with a `num_classes`-way top_layer."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
    lo, hi = ARCHITECTURES[name]
    if not lo <= image_size <= hi:
        raise ValueError(f"{name} is built for {lo}-{hi} px inputs, got image_size={image_size}")
    common = dict(num_classes=num_classes, sobel=sobel, fc_dim=fc_dim, dropout=dropout, dtype=dtype,
                  bn_two_pass=bn_two_pass)
    if name == "alexnet":
        if widths:
            raise ValueError("alexnet keeps the reference widths; use alexnet_small to change them")
        return AlexNet(convs=IMAGENET_CONVS, **common)
    if name == "alexnet_small":
        return AlexNet(convs=small_convs(image_size, tuple(widths or SMALL_WIDTHS)), **common)
    if widths:
        raise ValueError("vgg16 keeps the reference widths")
    return VGG16(**common)


def from_config(config: Any, num_classes: int) -> nn.Module:
    """The architecture `config.model` describes, for `config.data.image_size` inputs."""
    m = config.model
    return create_model(m.name, num_classes, image_size=config.data.image_size, sobel=m.sobel,
                        fc_dim=m.fc_dim, widths=tuple(m.widths) or None, dropout=m.dropout,
                        dtype=jnp.dtype(m.dtype), bn_two_pass=m.bn_variance == "two_pass")


__all__ = [
    "ARCHITECTURES",
    "AlexNet",
    "ConvSpec",
    "VGG16",
    "create_model",
    "from_config",
    "small_convs",
    "sobel_filter",
]
