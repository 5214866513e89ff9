"""Model registry: architectures by name, each built from the `config.model` fields.

Every architecture keeps the model contract (dcjax/models/alexnet.py, `OUTPUTS`): named outputs
('logits', 'embedding', 'layers'), its `feature_dim`, the pooling its probed layers need and its
first-layer filters. Nothing outside this package names a layer or branches on an architecture.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dcjax.models import interop
from dcjax.models.alexnet import IMAGENET_CONVS, SMALL_WIDTHS, AlexNet, ConvSpec, small_convs
from dcjax.models.resnet import ResNet, resnet
from dcjax.models.sobel import sobel_filter
from dcjax.models.vgg import VGG16


@dataclasses.dataclass(frozen=True)
class Architecture:
    """`build(num_classes, image_size, widths, **common)` -> the module; `sizes` the input sides
    (pixels, inclusive range) the geometry is made for; `widths`: how many conv widths
    config.model.widths takes (0: the reference widths only)."""

    build: Callable[..., nn.Module]
    sizes: tuple[int, int]
    widths: int = 0


def _alexnet(num_classes, image_size, widths, **common):
    if widths:
        raise ValueError("alexnet keeps the reference widths; use alexnet_small to change them")
    return AlexNet(convs=IMAGENET_CONVS, num_classes=num_classes, **common)


def _alexnet_small(num_classes, image_size, widths, **common):
    return AlexNet(convs=small_convs(image_size, tuple(widths or SMALL_WIDTHS)),
                   num_classes=num_classes, **common)


def _vgg16(num_classes, image_size, widths, **common):
    if widths:
        raise ValueError("vgg16 keeps the reference widths")
    return VGG16(num_classes=num_classes, **common)


def _resnet(depth: int, cifar_stem: bool):
    def build(num_classes, image_size, widths, *, sobel, dtype, bn_two_pass, **_unused):
        # fc_dim and dropout are AlexNet / VGG fields: a ResNet's width is its own (feature_dim).
        return resnet(depth, num_classes, cifar_stem=cifar_stem, sobel=sobel, dtype=dtype,
                      bn_two_pass=bn_two_pass, widths=widths)

    return build


REGISTRY: dict[str, Architecture] = {
    "alexnet": Architecture(_alexnet, (224, 224)),
    "alexnet_small": Architecture(_alexnet_small, (28, 64), widths=5),
    "vgg16": Architecture(_vgg16, (224, 224)),
    "resnet18": Architecture(_resnet(18, False), (64, 512)),
    "resnet50": Architecture(_resnet(50, False), (64, 512)),
    # The CIFAR stem (3x3/1 conv, no max-pool) for 28-64 px inputs, as solo-learn uses.
    "resnet18_cifar": Architecture(_resnet(18, True), (28, 64)),
    "resnet50_cifar": Architecture(_resnet(50, True), (28, 64)),
}
# name -> the input sizes (pixels, inclusive range) the architecture's geometry is made for.
ARCHITECTURES: dict[str, tuple[int, int]] = {name: a.sizes for name, a in REGISTRY.items()}
DTYPES = ("float32", "bfloat16")  # config.model.dtype
BN_VARIANCES = ("fast", "two_pass")  # config.model.bn_variance


def check_config(config: Any) -> None:
    """config.model's values (and the input size it needs); ConfigError naming the first bad one."""
    from dcjax.config_lib import require

    m, d = config.model, config.data
    require(m.name in REGISTRY,
            f"config.model.name={m.name!r} is not a known architecture ({', '.join(REGISTRY)})")
    lo, hi = REGISTRY[m.name].sizes
    require(lo <= d.image_size <= hi,
            f"config.data.image_size={d.image_size} does not fit {m.name}, built for {lo}-{hi} px")
    require(m.dtype in DTYPES, f"config.model.dtype={m.dtype!r} must be one of {DTYPES}")
    require(m.bn_variance in BN_VARIANCES, f"config.model.bn_variance={m.bn_variance!r} must be "
            f"one of {BN_VARIANCES}")
    require(0.0 <= m.dropout < 1.0, f"config.model.dropout={m.dropout} must be in [0, 1)")
    takes = REGISTRY[m.name].widths
    require(not m.widths or (takes and len(m.widths) == takes),
            f"config.model.widths={tuple(m.widths)} needs alexnet_small and 5 values")
    init = Path(str(m.init)).expanduser()
    require(not m.init or interop.is_network_dir(init) or (init / "config.json").is_file(),
            f"config.model.init={m.init!r} is neither a folder written by python -m dcjax.convert "
            f"or export --init (network.npz, network.json) nor a dcjax run (config.json)")


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
    if name not in REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(REGISTRY)}")
    lo, hi = REGISTRY[name].sizes
    if not lo <= image_size <= hi:
        raise ValueError(f"{name} is built for {lo}-{hi} px inputs, got image_size={image_size}")
    return REGISTRY[name].build(num_classes, image_size, widths, sobel=sobel, fc_dim=fc_dim,
                                dropout=dropout, dtype=dtype, bn_two_pass=bn_two_pass)


def from_config(config: Any, num_classes: int) -> nn.Module:
    """The architecture `config.model` describes, for `config.data.image_size` inputs."""
    m = config.model
    return create_model(m.name, num_classes, image_size=config.data.image_size, sobel=m.sobel,
                        fc_dim=m.fc_dim, widths=tuple(m.widths) or None, dropout=m.dropout,
                        dtype=jnp.dtype(m.dtype), bn_two_pass=m.bn_variance == "two_pass")


__all__ = [
    "ARCHITECTURES",
    "REGISTRY",
    "AlexNet",
    "ResNet",
    "Architecture",
    "ConvSpec",
    "VGG16",
    "create_model",
    "from_config",
    "small_convs",
    "sobel_filter",
]
