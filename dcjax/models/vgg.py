"""VGG16 with BatchNorm, as in DeepCluster's VGG16 experiments, in Flax Linen.

Convs `[64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M, 512, 512, 512, M]`, each 3x3 pad 1
-> BatchNorm -> ReLU; M = max-pool 2x2 stride 2. At 224 px the body ends at 7x7x512 = 25088; classifier
fc6 (25088 -> 4096) -> ReLU -> Dropout -> fc7 -> ReLU -> top_layer, no dropout before fc6. Sobel front
end and initialisation as AlexNet.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dcjax.models.alexnet import classifier_head, conv_bn_relu, front_end

VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M")


class VGG16(nn.Module):
    """VGG16-BN, with AlexNet's outputs: output='layers' gives the 13 conv activations after ReLU,
    before pooling, as 'conv1' ... 'conv13'; 'embedding' fc7 before its ReLU."""

    fc_dim: int = 4096
    num_classes: int = 10000
    sobel: bool = True
    dropout: float = 0.5
    dtype: Any = jnp.float32
    bn_two_pass: bool = False  # as AlexNet's

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, output: str = "logits"):
        x = front_end(self, x, output)
        activations = []
        i = 0
        for item in VGG16_LAYOUT:
            if item == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
                continue
            i += 1
            x = conv_bn_relu(self, x, item, 3, 1, 1, train, i)
            activations.append(x)
        if output == "layers":
            return {f"conv{i}": a for i, a in enumerate(activations, start=1)}
        x = x.reshape((x.shape[0], -1))
        return classifier_head(self, x, train, output, dropout_before_fc6=False)

    @property
    def feature_dim(self) -> int:
        return self.fc_dim

    embedding_name = "fc7"
    embedding_description = "fc7 (before its ReLU)"
    layer_names = tuple(f"conv{i}" for i in range(1, 14))

    def layer_pooling(self, image_size: int) -> None:
        return None  # the probes' adaptive pooling for each of the 13 conv layers

    @staticmethod
    def first_filters(params: dict) -> Any:
        return params["conv1"]["kernel"]
