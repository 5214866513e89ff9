"""The architectures match the reference's tables, counts and initialisation."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dcjax.models import create_model, sobel_filter
from dcjax.models.sobel import NUM_CONSTANTS, SOBEL_X, SOBEL_Y


def param_count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_init(model, size):
    return jax.eval_shape(lambda: model.init({"params": jax.random.key(0)},
                                             jnp.zeros((1, size, size, 3))))


def torch_count(convs, fcs, in_ch=2):
    """PyTorch parameter count: conv (weight + bias) + BatchNorm (gamma + beta) + Linear layers.

    convs: (out_channels, kernel) in order; fcs: (in_features, out_features).
    """
    total, c = 0, in_ch
    for out, k in convs:
        total += k * k * c * out + out + 2 * out
        c = out
    return total + sum(i * o + o for i, o in fcs)


ALEXNET_TABLE = [(96, 11), (256, 5), (384, 3), (384, 3), (256, 3)]
VGG16_TABLE = [(c, 3) for c in (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)]


def test_alexnet_224_layer_shapes_match_the_table():
    model = create_model("alexnet", 10000, image_size=224)
    variables = abstract_init(model, 224)
    layers = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 224, 224, 3)), output="layers"),
                            variables)
    assert {name: a.shape for name, a in layers.items()} == {
        "conv1": (2, 55, 55, 96), "conv2": (2, 27, 27, 256), "conv3": (2, 13, 13, 384),
        "conv4": (2, 13, 13, 384), "conv5": (2, 13, 13, 256)}
    fc7 = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 224, 224, 3)), output="embedding"),
                         variables)
    assert fc7.shape == (2, 4096) == (2, model.feature_dim)
    assert model.layer_pooling(224) is not None  # the paper's table, declared by the model
    assert variables["params"]["fc6"]["kernel"].shape == (9216, 4096)  # 6x6x256 after pool5
    assert variables["params"]["top_layer"]["kernel"].shape == (4096, 10000)


def test_alexnet_parameter_count_equals_the_pytorch_reference():
    expected = torch_count(ALEXNET_TABLE, [(9216, 4096), (4096, 4096), (4096, 10000)])
    assert expected == 99_242_480  # the reference AlexNet-BN + Sobel with a 10,000-way head
    variables = abstract_init(create_model("alexnet", 10000, image_size=224), 224)
    assert param_count(variables["params"]) == expected
    assert NUM_CONSTANTS == 24  # frozen Sobel scalars in the reference, not counted as params


def test_alexnet_without_sobel_takes_three_channels():
    variables = abstract_init(create_model("alexnet", 1000, image_size=224, sobel=False), 224)
    assert variables["params"]["conv1"]["kernel"].shape == (11, 11, 3, 96)
    expected = torch_count(ALEXNET_TABLE, [(9216, 4096), (4096, 4096), (4096, 1000)], in_ch=3)
    assert param_count(variables["params"]) == expected


def test_vgg16_parameter_count_and_shapes():
    expected = torch_count(VGG16_TABLE, [(25088, 4096), (4096, 4096), (4096, 10000)])
    assert expected == 175_238_416
    model = create_model("vgg16", 10000, image_size=224)
    variables = abstract_init(model, 224)
    assert param_count(variables["params"]) == expected
    layers = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 224, 224, 3)), output="layers"),
                            variables)
    assert list(model.layer_names) == [f"conv{i}" for i in range(1, 14)] and len(layers) == 13
    assert layers["conv13"].shape == (1, 14, 14, 512)
    assert model.feature_dim == 4096 and model.layer_pooling(224) is None


@pytest.mark.parametrize("size,last,flat", [(28, 6, 1024), (32, 7, 2304), (64, 7, 2304)])
def test_small_alexnet_geometry(size, last, flat):
    model = create_model("alexnet_small", 10, image_size=size)
    variables = abstract_init(model, size)
    layers = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, size, size, 3)),
                                                  output="layers"), variables)
    assert len(layers) == 5 and layers["conv5"].shape[1:3] == (last, last)
    assert model.layer_pooling(size) is None  # adaptive pooling off the paper's geometry
    assert variables["params"]["fc6"]["kernel"].shape[0] == flat


def test_unknown_architecture_and_wrong_size_are_refused():
    with pytest.raises(ValueError, match="unknown architecture"):
        create_model("resnet101", 10, image_size=224)
    with pytest.raises(ValueError, match="224-224 px"):
        create_model("alexnet", 10, image_size=32)


def test_reference_initialisation():
    model = create_model("alexnet", 100, image_size=224)
    params = model.init({"params": jax.random.key(0)}, jnp.zeros((1, 224, 224, 3)))["params"]
    conv2 = np.asarray(params["conv2"]["kernel"])  # [5, 5, 96, 256]: He fan-out = 5*5*256
    assert conv2.std() == pytest.approx(np.sqrt(2.0 / (5 * 5 * 256)), rel=0.02)
    assert np.asarray(params["fc6"]["kernel"]).std() == pytest.approx(0.01, rel=0.02)
    assert np.all(np.asarray(params["conv2"]["bias"]) == 0)
    assert np.all(np.asarray(params["bn2"]["scale"]) == 1)


def numpy_sobel(x: np.ndarray) -> np.ndarray:
    gray = x.mean(axis=-1)
    padded = np.pad(gray, ((0, 0), (1, 1), (1, 1)))
    h, w = gray.shape[1:]
    out = np.zeros(gray.shape + (2,), np.float64)
    for k, kernel in enumerate((SOBEL_X, SOBEL_Y)):
        for i in range(3):
            for j in range(3):
                out[..., k] += kernel[i, j] * padded[:, i : i + h, j : j + w]
    return out


def test_sobel_equals_numpy_reference():
    x = np.random.default_rng(0).normal(size=(3, 17, 13, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(sobel_filter(jnp.asarray(x))), numpy_sobel(x),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_sobel_kernels_are_constants_untouched_by_a_training_step():
    model = create_model("alexnet_small", 10, image_size=32, widths=(8, 8, 8, 8, 8), fc_dim=16)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 32, 32, 3)), jnp.float32)
    variables = model.init({"params": jax.random.key(0)}, x)
    flat = flax.traverse_util.flatten_dict(variables["params"])
    # The body's first conv takes the 2 Sobel channels; no parameter holds a Sobel kernel.
    assert flat[("conv1", "kernel")].shape == (5, 5, 2, 8)
    assert not any(v.shape in ((3, 3, 1, 2), (1, 1, 3, 1)) for v in flat.values())

    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(4)).mean()

    tx = optax.sgd(0.1)
    grads = jax.grad(loss)(variables["params"])
    new = optax.apply_updates(variables["params"], tx.update(grads, tx.init(grads))[0])
    assert not np.allclose(new["conv1"]["kernel"], variables["params"]["conv1"]["kernel"])
    np.testing.assert_array_equal(np.asarray(sobel_filter(x)), np.asarray(sobel_filter(x)))
    np.testing.assert_allclose(np.asarray(sobel_filter(x)), numpy_sobel(np.asarray(x)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bfloat16_compute_with_float32_state():
    from conftest import ROOT

    from dcjax.clustering.kmeans import kmeans
    from dcjax.config_lib import load_config_file
    from dcjax.models import from_config
    from dcjax.step import create_train_state, make_feature_fn, make_train_step

    c = load_config_file(str(ROOT / "configs" / "digits.py"), "smoke")
    c.model.dtype = "bfloat16"
    model = from_config(c, 10)
    state = create_train_state(model, c, jax.random.key(0))
    images = jax.random.randint(jax.random.key(1), (32, 32, 32, 3), 0, 256).astype(jnp.uint8)
    labels = jnp.arange(32) % 10
    step = jax.jit(make_train_step(model, c))
    jaxpr = str(jax.make_jaxpr(step)(state, images, labels, jax.random.key(2)))
    assert "conv_general_dilated" in jaxpr and "bf16[32,32,32,8]" in jaxpr  # conv1 output in bf16
    before = np.asarray(state.params["conv1"]["kernel"])
    for _ in range(3):
        state, m = step(state, images, labels, jax.random.key(2))
        assert m["loss"].dtype == jnp.float32 and np.isfinite(float(m["loss"]))
    assert not np.allclose(np.asarray(state.params["conv1"]["kernel"]), before)  # it trains
    dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.batch_stats))}
    assert dtypes == {jnp.dtype(jnp.float32)}  # parameters and BatchNorm statistics stay float32
    features = jax.jit(make_feature_fn(model))(state.params, state.batch_stats, images)
    assert features.dtype == jnp.float32
    # k-means scores at float32 accuracy whatever the default matmul precision says.
    x = np.random.default_rng(0).normal(size=(256, 16)).astype(np.float32)
    with jax.default_matmul_precision("bfloat16"):
        low = kmeans(x, 8, iterations=5, seed=0)
    high = kmeans(x, 8, iterations=5, seed=0)
    np.testing.assert_array_equal(low.assignment, high.assignment)
