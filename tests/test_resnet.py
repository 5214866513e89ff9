"""ResNet-18 / ResNet-50 (v1.5) against a PyTorch ResNet written from the architecture table with
torchvision's names (dcjax/bench/torch_resnet.py, also the ResNet benchmark's reference): the same
weights, written by the converter in torchvision's layout, and BatchNorm statistics (random) give
the same output at every stage, the same pooled features and the same logits, in float32
(dcjax/models/resnet.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch (the test oracle) is not installed")

from dcjax.bench.torch_resnet import TorchResNet  # noqa: E402
from dcjax.models import create_model, interop  # noqa: E402
from dcjax.models.resnet import STAGES  # noqa: E402


def randomized(variables, seed=0):
    """Random BatchNorm scales, biases and running statistics (init has 1, 0, 0, 1)."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(np.array, variables["params"])  # writable copies
    stats = jax.tree.map(np.array, variables["batch_stats"])
    for name in stats:
        stats[name]["mean"] = rng.normal(0, 0.5, stats[name]["mean"].shape).astype(np.float32)
        stats[name]["var"] = rng.uniform(0.5, 2.0, stats[name]["var"].shape).astype(np.float32)
        params[name]["scale"] = rng.uniform(0.5, 1.5, params[name]["scale"].shape).astype(np.float32)
        params[name]["bias"] = rng.normal(0, 0.2, params[name]["bias"].shape).astype(np.float32)
    params["top_layer"]["kernel"] = rng.normal(0, 0.05, params["top_layer"]["kernel"].shape
                                               ).astype(np.float32)
    return params, stats


def load_into_torch(net, params, stats, arch):
    """The dcjax weights through the converter's torchvision layout (dcjax.models.interop): every
    key of the PyTorch network is written (strict), so a name the converter gets wrong fails."""
    state = interop.to_torch_state(params, stats, arch)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


@pytest.mark.parametrize("name,size,sobel", [
    ("resnet18_cifar", 32, False),
    pytest.param("resnet18", 64, False, marks=pytest.mark.slow),
    pytest.param("resnet50", 96, True, marks=pytest.mark.slow),
    pytest.param("resnet50_cifar", 32, False, marks=pytest.mark.slow)])
def test_resnet_matches_a_pytorch_resnet_at_every_stage(name, size, sobel):
    depth = 50 if name.startswith("resnet50") else 18
    model = create_model(name, 7, image_size=size, sobel=sobel)
    x = np.random.default_rng(1).standard_normal((2, size, size, 3)).astype(np.float32)
    variables = model.init({"params": jax.random.key(0)}, jnp.asarray(x))
    params, stats = randomized(variables)
    net = TorchResNet(depth, 7, name.endswith("_cifar"), sobel).eval()
    load_into_torch(net, params, stats, name)
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    v = {"params": params, "batch_stats": stats}
    layers = model.apply(v, jnp.asarray(x), output="layers")
    assert list(model.layer_names) == [*STAGES, "pool"]
    for stage in STAGES:
        got = np.asarray(layers[stage]).transpose(0, 3, 1, 2)
        assert relative(got, want[stage].numpy()) < 1e-5, stage
    pooled = model.apply(v, jnp.asarray(x), output="embedding")
    assert pooled.shape == (2, model.feature_dim)
    assert relative(pooled, want["pool"].numpy()) < 1e-5
    np.testing.assert_array_equal(np.asarray(layers["pool"])[:, 0, 0], np.asarray(pooled))
    assert relative(model.apply(v, jnp.asarray(x)), want["logits"].numpy()) < 1e-5


def test_resnet_parameter_counts_equal_torchvisions():
    """torchvision's resnet18 / resnet50 with 1,000 classes: 11,689,512 and 25,557,032 parameters
    (3-channel stem); the Sobel stem has 2 input channels."""
    for name, expected in (("resnet18", 11_689_512), ("resnet50", 25_557_032)):
        for sobel, minus in ((False, 0), (True, 64 * 7 * 7)):
            model = create_model(name, 1000, image_size=224, sobel=sobel)
            shapes = jax.eval_shape(lambda m=model: m.init({"params": jax.random.key(0)},
                                                          jnp.zeros((1, 224, 224, 3))))
            count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))
            assert count == expected - minus, (name, sobel)


@pytest.mark.slow
def test_deepcluster_on_a_resnet_is_one_config_field(tmp_path):
    """config.model.name='resnet18_cifar' is all a DeepCluster run changes: it clusters the pooled
    512-d features, resets the ResNet's top layer and exports them."""
    from conftest import make_config

    from dcjax.runner import train_and_evaluate

    c = make_config(**{"model.name": "resnet18_cifar", "model.widths": (), "data.eval_split": "",
                       "pixel_baseline": False})
    final = train_and_evaluate(c, str(tmp_path))
    assert final["epoch"] == 0 and np.isfinite(final["loss"]) and final["nonempty_clusters"] >= 2
    assert np.load(tmp_path / "export" / "features_fc7.npy").shape == (1438, 512)
