"""The frozen Sobel front end of DeepCluster.

The reference applies, to the mean/std-normalised RGB input, a 1x1 convolution 3->1 with weights 1/3
(grayscale) and then a 3x3 convolution 1->2 (padding 1) holding the horizontal and vertical Sobel
kernels. Both are constants here, not parameters: they get no gradient and no weight decay, and they
never appear in `params`. PyTorch convolutions and `lax.conv` are both cross-correlations, so the
kernels are copied as they are.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float32)
SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float32)

# Number of scalars in the reference's two frozen conv layers (weights and zero biases): 3 + 1 + 18 + 2.
NUM_CONSTANTS = 24


def sobel_kernel() -> np.ndarray:
    """The 3x3 Sobel pair as an HWIO kernel: [3, 3, 1, 2] float32."""
    return np.stack([SOBEL_X, SOBEL_Y], axis=-1)[:, :, None, :]


def sobel_filter(x: jnp.ndarray) -> jnp.ndarray:
    """[B, H, W, 3] normalised RGB -> [B, H, W, 2] Sobel responses of the grayscale image."""
    gray = jnp.mean(x, axis=-1, keepdims=True)  # the 1x1 conv with weights 1/3, bias 0
    kernel = jnp.asarray(sobel_kernel(), dtype=x.dtype)
    return lax.conv_general_dilated(
        gray,
        kernel,
        window_strides=(1, 1),
        padding=((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST,
    )
