"""AlexNet with BatchNorm, as DeepCluster trains it, in Flax Linen.

ImageNet geometry (input 224x224), every conv = Conv(bias) -> BatchNorm -> ReLU, no LRN, no groups;
max-pool 3x3 stride 2 VALID after conv1, conv2 and conv5:

| layer | out ch | kernel | stride | pad | output  |
|-------|--------|--------|--------|-----|---------|
| conv1 | 96     | 11     | 4      | 2   | 55x55   |
| pool  |        | 3      | 2      | 0   | 27x27   |
| conv2 | 256    | 5      | 1      | 2   | 27x27   |
| pool  |        | 3      | 2      | 0   | 13x13   |
| conv3 | 384    | 3      | 1      | 1   | 13x13   |
| conv4 | 384    | 3      | 1      | 1   | 13x13   |
| conv5 | 256    | 3      | 1      | 1   | 13x13   |
| pool  |        | 3      | 2      | 0   | 6x6 -> 9216 |

Small-input variant (`alexnet_small`, for 28-64 px data), same five stages, BN, Sobel and head; conv1
uses stride 2 when the input is 48 px or more so that 64 px inputs follow the 32 px geometry:

| layer | out ch | kernel | stride | pad | output at 32 px (28 px) |
|-------|--------|--------|--------|-----|-------------------------|
| conv1 | 64     | 5      | 1      | 2   | 32x32 (28x28)           |
| pool  |        | 3      | 2      | 0   | 15x15 (13x13)           |
| conv2 | 192    | 5      | 1      | 2   | 15x15 (13x13)           |
| pool  |        | 3      | 2      | 0   | 7x7 (6x6)               |
| conv3 | 384    | 3      | 1      | 1   | 7x7 (6x6)               |
| conv4 | 256    | 3      | 1      | 1   | 7x7 (6x6)               |
| conv5 | 256    | 3      | 1      | 1   | 7x7 (6x6)               |
| pool  |        | 3      | 2      | 0   | 3x3 -> 2304 (2x2 -> 1024) |

The widths and the fc width are arguments, so a config can shrink the network for a laptop.
Classifier (both): Dropout(0.5) -> fc6 -> ReLU -> Dropout(0.5) -> fc7 -> ReLU -> top_layer (k-way).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dcjax.models.sobel import sobel_filter

# Conv weights N(0, sqrt(2 / (kh * kw * out_ch))) (He, fan-out); Linear N(0, 0.01); biases 0.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.normal(0.01)

# BatchNorm as PyTorch's defaults: eps 1e-5, running-average momentum 0.1 (Flax's 0.9).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# The model contract (docs/design.md, "Runner and methods"): every architecture's
# `__call__(x, train, output)` returns, by `output`,
#   'logits'    [B, num_classes], the top layer's scores;
#   'embedding' [B, feature_dim] float32, the vector DeepCluster clusters (here fc7 before its ReLU);
#   'layers'    {name: [B, H, W, C]}, the per-layer activations the linear probes read;
# and it declares `feature_dim`, `embedding_name` (what results call the embedding) and
# `embedding_description` (one line for reports), `layer_names`
# (the order of 'layers': a pytree's dict keys come back sorted, conv10 before conv2),
# `layer_pooling(image_size)` (each probed layer's average pooling, or None for the probes' adaptive
# default) and `first_filters(params)` (the first layer's kernel, for the filter plot).
OUTPUTS = ("logits", "embedding", "layers")

# AlexNet at 224 px: (kernel, stride, pad) of each conv layer's average pooling for the linear probes
# (the paper's Table 1 setting, about 9k dims per layer; docs/design.md section 2).
PAPER_POOLING = {"conv1": (6, 6, 3), "conv2": (4, 4, 0), "conv3": (3, 3, 1), "conv4": (3, 3, 1),
                 "conv5": (2, 2, 0)}


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    features: int
    kernel: int
    stride: int
    padding: int
    pool: bool  # max-pool 3x3 stride 2 after this conv


IMAGENET_CONVS = (
    ConvSpec(96, 11, 4, 2, True),
    ConvSpec(256, 5, 1, 2, True),
    ConvSpec(384, 3, 1, 1, False),
    ConvSpec(384, 3, 1, 1, False),
    ConvSpec(256, 3, 1, 1, True),
)

SMALL_WIDTHS = (64, 192, 384, 256, 256)


def small_convs(image_size: int, widths: Sequence[int] = SMALL_WIDTHS) -> tuple[ConvSpec, ...]:
    """Conv stages of the small-input variant for `image_size` in [28, 64]."""
    if len(widths) != 5:
        raise ValueError(f"alexnet_small needs 5 conv widths, got {len(widths)}")
    stride1 = 2 if image_size >= 48 else 1
    return (
        ConvSpec(widths[0], 5, stride1, 2, True),
        ConvSpec(widths[1], 5, 1, 2, True),
        ConvSpec(widths[2], 3, 1, 1, False),
        ConvSpec(widths[3], 3, 1, 1, False),
        ConvSpec(widths[4], 3, 1, 1, True),
    )


class AlexNet(nn.Module):
    """AlexNet-BN. `__call__(x, train, output)` with x: [B, H, W, 3] normalised RGB.

    output='logits' -> [B, num_classes]; 'embedding' -> [B, fc_dim] (fc7 before its ReLU: the
    features DeepCluster clusters); 'layers' -> {'conv1': ..., 'conv5': ...}, the five conv
    activations after ReLU, before pooling (what the linear probes read).
    """

    convs: tuple[ConvSpec, ...] = IMAGENET_CONVS
    fc_dim: int = 4096
    num_classes: int = 10000
    sobel: bool = True
    dropout: float = 0.5
    dtype: Any = jnp.float32
    # BatchNorm's batch variance: E[(x - E[x])^2] (two passes, PyTorch's formula) when True;
    # E[x^2] - E[x]^2 (Flax's fast default) when False.
    bn_two_pass: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, output: str = "logits"):
        x = front_end(self, x, output)
        activations = []
        for i, spec in enumerate(self.convs, start=1):
            x = conv_bn_relu(self, x, spec.features, spec.kernel, spec.stride, spec.padding, train, i)
            activations.append(x)
            if spec.pool:
                x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
        if output == "layers":
            return {f"conv{i}": a for i, a in enumerate(activations, start=1)}
        x = x.reshape((x.shape[0], -1))
        return classifier_head(self, x, train, output, dropout_before_fc6=True)

    @property
    def feature_dim(self) -> int:
        return self.fc_dim

    embedding_name = "fc7"
    embedding_description = "fc7 (before its ReLU)"

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(f"conv{i}" for i in range(1, len(self.convs) + 1))

    def layer_pooling(self, image_size: int) -> dict[str, tuple[int, int, int]] | None:
        """The paper's pooling at the reference geometry; None (adaptive) otherwise."""
        return PAPER_POOLING if self.convs == IMAGENET_CONVS and image_size == 224 else None

    @staticmethod
    def first_filters(params: dict) -> Any:
        return params["conv1"]["kernel"]


def front_end(module: nn.Module, x: jnp.ndarray, output: str) -> jnp.ndarray:
    """Checks `output`, applies the frozen Sobel filter when configured, casts to compute dtype."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if module.sobel:
        x = sobel_filter(x)
    return x.astype(module.dtype)


def conv_bn_relu(module: nn.Module, x: jnp.ndarray, features: int, kernel: int, stride: int,
                 padding: int, train: bool, index: int) -> jnp.ndarray:
    """Conv(bias) -> BatchNorm -> ReLU named conv{index} / bn{index}; call inside compact."""
    x = nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                padding=((padding, padding), (padding, padding)), kernel_init=conv_init,
                dtype=module.dtype, name=f"conv{index}")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                     use_fast_variance=not module.bn_two_pass, dtype=module.dtype,
                     name=f"bn{index}")(x)
    return nn.relu(x)


def classifier_head(module: nn.Module, x: jnp.ndarray, train: bool, output: str,
                    dropout_before_fc6: bool) -> jnp.ndarray:
    """fc6 -> ReLU -> Dropout -> fc7 (-> ReLU -> top_layer), shared by AlexNet and VGG16.

    Must be called from inside the module's compact `__call__`.
    """
    dense = dict(kernel_init=dense_init, dtype=module.dtype)
    if dropout_before_fc6:
        x = nn.Dropout(module.dropout, deterministic=not train)(x)
    x = nn.Dense(module.fc_dim, name="fc6", **dense)(x)
    x = nn.relu(x)
    x = nn.Dropout(module.dropout, deterministic=not train)(x)
    fc7 = nn.Dense(module.fc_dim, name="fc7", **dense)(x)
    if output == "embedding":
        return fc7.astype(jnp.float32)
    x = nn.relu(fc7)
    # The head is its own subtree so it can be re-initialised each epoch without recompiling.
    logits = nn.Dense(module.num_classes, name="top_layer", **dense)(x)
    return logits.astype(jnp.float32)
