"""ResNet-18 / ResNet-50 (v1.5, torchvision's layout) in Flax Linen, with the model contract.

| stage | ResNet-18 (BasicBlock)     | ResNet-50 (Bottleneck)            | output at 224 px |
|-------|----------------------------|-----------------------------------|------------------|
| stem  | conv 7x7/2 64, BN, ReLU, max-pool 3x3/2                        | 56x56            |
| res2  | 2 x [3x3 64, 3x3 64]       | 3 x [1x1 64, 3x3 64, 1x1 256]     | 56x56            |
| res3  | 2 x [3x3 128, 3x3 128] /2  | 4 x [1x1 128, 3x3 128 /2, 1x1 512]| 28x28            |
| res4  | 2 x [3x3 256, 3x3 256] /2  | 6 x [1x1 256, 3x3 256 /2, 1x1 1024]| 14x14           |
| res5  | 2 x [3x3 512, 3x3 512] /2  | 3 x [1x1 512, 3x3 512 /2, 1x1 2048]| 7x7             |
| pool  | global average -> 512      | global average -> 2048            |                  |

v1.5: a bottleneck's stride sits in its 3x3 conv (torchvision, and swav's `src/resnet50.py`); the
first block of a stage whose stride or width changes has a 1x1 conv + BN shortcut. Convs have no
bias; every conv is followed by BatchNorm (PyTorch's eps 1e-5, momentum 0.1). The CIFAR stem
(`cifar_stem`, for 28-64 px inputs, as solo-learn uses) is one 3x3/1 conv and no max-pool. With
`sobel`, the fixed Sobel front end (models/sobel.py) feeds the stem 2 channels, as in mmselfsup's
DeepCluster ResNet-50 setting.

Outputs: 'logits' = top_layer(pooled) [B, num_classes]; 'embedding' = the pooled features
[B, 512 * expansion] (what DeepCluster clusters and the probes call 'pool'); 'layers' = res2..res5
after their last ReLU, and 'pool' as [B, 1, 1, C].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dcjax.models.alexnet import BN_EPSILON, BN_MOMENTUM, OUTPUTS, dense_init
from dcjax.models.sobel import sobel_filter

# torchvision: kaiming_normal_(mode='fan_out', nonlinearity='relu') for convs.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

DEPTHS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3)}
WIDTHS = (64, 128, 256, 512)
STAGES = ("res2", "res3", "res4", "res5")


class ResNet(nn.Module):
    depth: int = 50
    num_classes: int = 1000
    cifar_stem: bool = False
    sobel: bool = False
    dtype: Any = jnp.float32
    bn_two_pass: bool = False

    @property
    def bottleneck(self) -> bool:
        return self.depth >= 50

    @property
    def feature_dim(self) -> int:
        return WIDTHS[-1] * (4 if self.bottleneck else 1)

    embedding_name = "pool"
    embedding_description = "pool (res5 averaged over its positions, after its ReLU)"
    layer_names = (*STAGES, "pool")

    def layer_pooling(self, image_size: int) -> None:
        # The probes' adaptive pooling to about config.eval.probe_dim (9,216) dims per stage: at
        # 224 px 6x6 on res2, 4x4 on res3, 3x3 on res4, 2x2 on res5 (mmselfsup's ResNet probes).
        return None

    @staticmethod
    def first_filters(params: dict) -> Any:
        return params["conv1"]["kernel"]

    def _bn(self, train: bool, name: str):
        return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                            use_fast_variance=not self.bn_two_pass, dtype=self.dtype, name=name)

    def _conv(self, features: int, kernel: int, stride: int, name: str):
        pad = (kernel - 1) // 2
        return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                       padding=((pad, pad), (pad, pad)), use_bias=False, kernel_init=conv_init,
                       dtype=self.dtype, name=name)

    def _block(self, x, width: int, stride: int, train: bool, name: str):
        expansion = 4 if self.bottleneck else 1
        out_ch = width * expansion
        shortcut = x
        if stride != 1 or x.shape[-1] != out_ch:
            shortcut = self._conv(out_ch, 1, stride, f"{name}_downsample_conv")(x)
            shortcut = self._bn(train, f"{name}_downsample_bn")(shortcut)
        if self.bottleneck:
            y = nn.relu(self._bn(train, f"{name}_bn1")(self._conv(width, 1, 1, f"{name}_conv1")(x)))
            y = nn.relu(self._bn(train, f"{name}_bn2")(
                self._conv(width, 3, stride, f"{name}_conv2")(y)))
            y = self._bn(train, f"{name}_bn3")(self._conv(out_ch, 1, 1, f"{name}_conv3")(y))
        else:
            y = nn.relu(self._bn(train, f"{name}_bn1")(
                self._conv(width, 3, stride, f"{name}_conv1")(x)))
            y = self._bn(train, f"{name}_bn2")(self._conv(width, 3, 1, f"{name}_conv2")(y))
        return nn.relu(y + shortcut)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, output: str = "logits"):
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
        if self.sobel:
            x = sobel_filter(x)
        x = x.astype(self.dtype)
        if self.cifar_stem:
            x = nn.relu(self._bn(train, "bn1")(self._conv(64, 3, 1, "conv1")(x)))
        else:
            x = nn.relu(self._bn(train, "bn1")(self._conv(64, 7, 2, "conv1")(x)))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        layers = {}
        for s, (stage, width, blocks) in enumerate(zip(STAGES, WIDTHS, DEPTHS[self.depth])):
            for b in range(blocks):
                stride = 2 if (s > 0 and b == 0) else 1
                x = self._block(x, width, stride, train, f"{stage}_{b}")
            layers[stage] = x
        pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if output == "layers":
            return {**layers, "pool": pooled[:, None, None, :]}
        if output == "embedding":
            return pooled
        logits = nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype,
                          name="top_layer")(pooled.astype(self.dtype))
        return logits.astype(jnp.float32)


def resnet(depth: int, num_classes: int, *, cifar_stem: bool = False, sobel: bool = False,
           dtype: Any = jnp.float32, bn_two_pass: bool = False,
           widths: Sequence[int] | None = None) -> ResNet:
    if widths:
        raise ValueError(f"resnet{depth} keeps the reference widths")
    return ResNet(depth=depth, num_classes=num_classes, cifar_stem=cifar_stem, sobel=sobel,
                  dtype=dtype, bn_two_pass=bn_two_pass)
