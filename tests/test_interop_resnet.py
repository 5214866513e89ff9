"""ResNets in and out of torchvision's layout and DeepCluster-v2 networks in and out of swav's
(dcjax.models.interop, dcjax.convert), with PyTorch on CPU as the oracle: the PyTorch networks of
dcjax/bench/torch_resnet.py carry torchvision's and swav's module names, so their state dicts are
those layouts."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, make_config

torch = pytest.importorskip("torch", reason="PyTorch (the test oracle) is not installed")

from dcjax.bench.torch_resnet import TorchDeepClusterV2, TorchResNet  # noqa: E402
from dcjax.models import create_model, interop  # noqa: E402


def randomise_batchnorm(net, seed=0):
    """Trained-looking BatchNorm everywhere (init has weight 1, bias 0, mean 0, var 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
    return net.eval()


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def convert(*args):
    return subprocess.run([sys.executable, "-m", "dcjax.convert", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def v2_config(arch="resnet18_cifar", **overrides):
    return make_config(**{"method": "deepcluster_v2", "model.name": arch, "model.widths": (),
                          "model.sobel": False,
                          "data.views": ((2, 32, (0.3, 1.0)), (2, 32, (0.1, 0.3))),
                          "deepcluster_v2.prototypes": (20, 30), "deepcluster_v2.hidden_dim": 64,
                          "deepcluster_v2.feat_dim": 32, **overrides})


@pytest.mark.parametrize("arch,size,sobel", [
    ("resnet18_cifar", 32, False),
    pytest.param("resnet50", 64, True, marks=pytest.mark.slow)])
def test_a_torchvision_resnet_converts_to_the_same_outputs_and_back_exactly(tmp_path, arch, size,
                                                                           sobel):
    depth = 50 if arch.startswith("resnet50") else 18
    torch.manual_seed(0)
    net = randomise_batchnorm(TorchResNet(depth, 10, arch.endswith("_cifar"), sobel))
    path = tmp_path / "resnet.pth"
    torch.save(net.state_dict(), path)  # torchvision's form: a plain state dict
    run = convert(f"--from_torch={path}", f"--out={tmp_path / 'net'}")  # no --arch: by its layers
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"{arch} deepcluster (k=10, features {512 * (4 if depth == 50 else 1)})" in run.stdout
    params, stats, info = interop.load_network_dir(tmp_path / "net")
    assert info["arch"] == arch and info["k"] == 10 and info["sobel"] == sobel
    model = create_model(arch, 10, image_size=size, sobel=sobel)
    x = np.random.default_rng(1).standard_normal((2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    v = {"params": params, "batch_stats": stats}
    assert relative(model.apply(v, jnp.asarray(x), output="embedding"), want["pool"]) < 1e-5
    assert relative(model.apply(v, jnp.asarray(x)), want["logits"]) < 1e-5
    back = interop.to_torch_state(params, stats, arch)
    assert list(back) == list(net.state_dict())  # torchvision's key order
    for key, value in net.state_dict().items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def swav_checkpoint(path, seed=0, prototypes=(20, 30)):
    """A random-weight DeepCluster-v2 network saved as swav releases its checkpoints: a plain
    state dict from DistributedDataParallel (`module.` prefix)."""
    torch.manual_seed(seed)
    net = randomise_batchnorm(TorchDeepClusterV2(18, True, False, 64, 32, prototypes), seed)
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)
    return net


@pytest.mark.slow
def test_swavs_deepcluster_v2_layout_converts_to_the_same_outputs_and_back_exactly(tmp_path):
    from dcjax.methods.deepcluster_v2 import DeepClusterV2

    net = swav_checkpoint(tmp_path / "dcv2.pth.tar")
    run = convert(f"--from_torch={tmp_path / 'dcv2.pth.tar'}", "--method=deepcluster_v2",
                  f"--out={tmp_path / 'net'}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "resnet18_cifar deepcluster_v2 (prototypes (20, 30), projection 64 -> 32" in run.stdout
    params, stats, info = interop.load_network_dir(tmp_path / "net")
    assert info["method"] == "deepcluster_v2" and info["prototypes"] == [20, 30]
    # A DeepCluster-v2 config's network, drawn and then replaced by the converted one.
    config = v2_config()
    model, p0, s0 = DeepClusterV2.initial_network(config, jax.sharding.Mesh(
        np.array(jax.devices()[:1]), ("data",)))
    p, s = interop.load_into(tmp_path / "net", p0, s0)
    x = np.random.default_rng(2).standard_normal((3, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    v = {"params": p, "batch_stats": s}
    assert relative(model.apply(v, jnp.asarray(x), output="embedding"), want["pool"]) < 1e-5
    assert relative(model.apply(v, jnp.asarray(x), output="projection"), want["projection"]) < 1e-5
    scores = model.apply(v, (jnp.asarray(x),), False, method=type(model).views)[1]
    for h in range(2):
        assert relative(scores[h], want["scores"][h]) < 1e-5, h
    back = interop.to_torch_state(p, s, "resnet18_cifar")
    saved = torch.load(tmp_path / "dcv2.pth.tar", weights_only=True)
    assert list(back) == list(saved)  # swav's keys, `module.` included, in its order
    for key, value in saved.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
    # The file says what it is: a contradicting --method or --arch is one line, exit 2.
    for flag, message in (("--method=deepcluster", "holds a deepcluster_v2 network"),
                          ("--arch=resnet50", "holds a resnet18_cifar (by its blocks")):
        run = convert(f"--from_torch={tmp_path / 'dcv2.pth.tar'}", flag, f"--out={tmp_path / 'o'}")
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1 and message in lines[0], run.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_converted_network_serves_both_methods_and_evaluation(tmp_path):
    """A DeepCluster-v2 file gives its trunk to a DeepCluster (v1) ResNet; a torchvision trunk
    goes under a DeepCluster-v2 head drawn afresh; prototypes of another size are drawn afresh
    (k-means sets them each epoch); evaluate's load_network reads the folder."""
    from dcjax.runs import load_network

    swav_checkpoint(tmp_path / "dcv2.pth.tar", prototypes=(7,))
    assert convert(f"--from_torch={tmp_path / 'dcv2.pth.tar'}",
                   f"--out={tmp_path / 'v2'}").returncode == 0
    v2_params, v2_stats, _ = interop.load_network_dir(tmp_path / "v2")
    v1 = make_config(**{"model.name": "resnet18_cifar", "model.widths": ()})
    with pytest.raises(interop.ConvertError, match=r"its first conv takes 3 channels, the "
                                                   r"config's 2: set --config.model.sobel=False"):
        load_network(v1, tmp_path, init=str(tmp_path / "v2"))
    v1.model.sobel = False
    net = load_network(v1, tmp_path, init=str(tmp_path / "v2"))
    np.testing.assert_array_equal(np.asarray(net.params["res3_0_conv1"]["kernel"]),
                                  v2_params["backbone"]["res3_0_conv1"]["kernel"])
    np.testing.assert_array_equal(np.asarray(net.batch_stats["bn1"]["mean"]),
                                  v2_stats["backbone"]["bn1"]["mean"])
    assert "top_layer" in net.params and "head" not in net.params
    v2 = v2_config()  # prototypes (20, 30): the file's (7,) are drawn afresh, the rest is the file's
    net = load_network(v2, tmp_path, init=str(tmp_path / "v2"))
    np.testing.assert_array_equal(np.asarray(net.params["head"]["projection_1"]["kernel"]),
                                  v2_params["head"]["projection_1"]["kernel"])
    assert net.params["head"]["prototypes0"]["kernel"].shape == (32, 20)

    torch.manual_seed(1)
    trunk = randomise_batchnorm(TorchResNet(18, None, True, False))
    torch.save(trunk.state_dict(), tmp_path / "trunk.pth")
    assert convert(f"--from_torch={tmp_path / 'trunk.pth'}",
                   f"--out={tmp_path / 'trunk'}").returncode == 0
    drawn = load_network(v2, tmp_path, init="random")
    net = load_network(v2, tmp_path, init=str(tmp_path / "trunk"))
    np.testing.assert_array_equal(np.asarray(net.params["backbone"]["res5_1_conv2"]["kernel"]),
                                  trunk.state_dict()["layer4.1.conv2.weight"].numpy()
                                  .transpose(2, 3, 1, 0))
    for a, b in zip(jax.tree.leaves(net.params["head"]), jax.tree.leaves(drawn.params["head"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    wrong = make_config(**{"model.name": "resnet50_cifar", "model.widths": (),
                           "model.sobel": False})
    with pytest.raises(interop.ConvertError, match=r"\(a resnet18_cifar\) has no "
                                                   r"params/res2_0_bn3/bias: it is not this"):
        load_network(wrong, tmp_path, init=str(tmp_path / "trunk"))


@pytest.mark.slow
def test_a_deepcluster_v2_resnet_run_loads_evaluates_and_leaves_in_swavs_layout(tmp_path):
    """One DeepCluster-v2 epoch of a ResNet-18 (CIFAR stem) on the 359 digits of the test split:
    the run's network loads from its checkpoint without its memory bank (load_network), kNN
    evaluates it, and `convert --to_torch` writes it as swav releases its checkpoints, which
    converts back exactly and starts a new run (--config.model.init)."""
    from test_train import final_params

    from dcjax.evaluate.run import evaluate
    from dcjax.methods.deepcluster_v2 import DeepClusterV2
    from dcjax.runner import setup, train_and_evaluate
    from dcjax.runs import config_from_run, load_network

    c = v2_config(**{"num_epochs": 1, "data.train_split": "test", "data.eval_split": "",
                     "pixel_baseline": False, "data.views": ((2, 32, (0.3, 1.0)),),
                     "deepcluster_v2.lr_epochs": 2, "deepcluster_v2.warmup_epochs": 1,
                     "deepcluster_v2.lr": 0.3, "deepcluster_v2.final_lr": 0.003,
                     "deepcluster_v2.start_warmup": 0.03})
    train_and_evaluate(c, str(tmp_path / "run"))
    step, saved = final_params(tmp_path / "run")
    config = config_from_run(tmp_path / "run")
    net = load_network(config, tmp_path / "run")
    assert net.step == step and net.epochs_trained == 1
    for a, b in zip(jax.tree.leaves(net.params), jax.tree.leaves(saved)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    config.eval.knn_k = 5
    config.data.train_split, config.data.eval_split = "train", "test"
    result = evaluate(config, str(tmp_path / "run"), "knn")
    assert result["checkpoint_step"] == step
    assert 0.2 < result["features"]["pool"] <= 1.0  # top-1 of ten classes: above chance

    run = convert(f"--to_torch={tmp_path / 'dcv2.pth'}", f"--workdir={tmp_path / 'run'}")
    assert run.returncode == 0 and "in swav's layout" in run.stdout, run.stderr[-2000:]
    saved_torch = torch.load(tmp_path / "dcv2.pth", weights_only=True)
    assert all(k.startswith("module.") for k in saved_torch)
    assert "module.prototypes.prototypes1.weight" in saved_torch
    params, stats, info = interop.from_torch_state(saved_torch, "resnet18_cifar")
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(jax.device_get(net.params))):
        np.testing.assert_array_equal(a, np.asarray(b))
    interop.save_network(tmp_path / "net", params, stats, info)
    c2 = v2_config(**{"model.init": str(tmp_path / "net"), "data.train_split": "test",
                      "data.eval_split": "", "data.views": ((2, 32, (0.3, 1.0)),)})
    method = setup(c2, str(tmp_path / "run2")).method
    assert isinstance(method, DeepClusterV2)
    start = method.init_state()
    for a, b in zip(jax.tree.leaves(start.params), jax.tree.leaves(jax.device_get(net.params))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
