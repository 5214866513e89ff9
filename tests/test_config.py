"""A bad configuration stops before any work with one sentence naming the field."""

import re
import subprocess
import sys

import pytest
from conftest import ROOT, make_config

from dcjax.config_lib import ConfigError, load_config_file, validate_against_data
from dcjax.validation import validate


def config(name, arg=None):
    return load_config_file(str(ROOT / "configs" / f"{name}.py"), arg)


def digits(arg=None):
    return config("digits", arg)


def test_reference_configs_validate():
    for name in ("digits", "fashion_mnist", "cifar10", "imagenette", "imagenet_alexnet",
                 "imagenet_vgg16", "imagenet_resnet50_deepcluster",
                 "imagenet_resnet50_deepcluster_v2"):
        for arg in (None, "smoke"):
            validate(config(name, arg), num_devices=4)
    for name in ("fashion_mnist", "cifar10", "imagenette"):
        validate(config(name, "cpu"), num_devices=4)
    validate(config("imagenette", "alexnet224"), num_devices=4)
    for arg in ("resnet18", "resnet18_v2"):
        validate(config("digits", arg), num_devices=4)
    for arg in ("photos", "photos,smoke", "photos,alexnet224", "photos,resnet18", "photos,resnet50"):
        validate(config("folder", arg), num_devices=4)


def test_imagenet_config_is_the_papers_setup():
    c = config("imagenet_alexnet")
    assert (c.model.name, c.model.sobel, c.clustering.k, c.num_epochs, c.batch_size) == (
        "alexnet", True, 10000, 500, 256)
    assert (c.optim.lr, c.optim.weight_decay, c.optim.momentum) == (0.05, 1e-5, 0.9)
    assert (c.clustering.pca_dim, c.clustering.iterations, c.seed) == (256, 20, 31)
    assert c.clustering.sampler == "uniform"


def test_clusterings_fields_bind_deepcluster_only():
    """config.clustering is DeepCluster's (v1): a DeepCluster-v2 run on fewer images than
    clustering.k validates (its prototypes are checked by the method)."""
    from dcjax.config_lib import ConfigError, validate_against_data

    v2 = config("imagenet_resnet50_deepcluster_v2", "smoke")
    assert v2.clustering.k == 10000
    validate_against_data(v2, {"train": 1438})
    v1 = config("imagenet_resnet50_deepcluster")
    with pytest.raises(ConfigError, match="config.clustering.k=10000 but the dataset"):
        validate_against_data(v1, {"train": 1438})


def test_imagenet_resnet_configs_are_the_references_setups():
    """mmselfsup's DeepCluster ResNet-50 (Sobel) and swav's 800-epoch DeepCluster-v2."""
    c = config("imagenet_resnet50_deepcluster")
    assert (c.method, c.model.name, c.model.sobel, c.clustering.k, c.clustering.pca_dim) == (
        "deepcluster", "resnet50", True, 10000, 256)
    assert (c.num_epochs, c.batch_size, c.optim.lr, c.optim.weight_decay) == (200, 512, 0.1, 1e-5)
    c = config("imagenet_resnet50_deepcluster_v2")
    v = c.deepcluster_v2
    assert (c.method, c.model.name, c.model.sobel, c.num_epochs, c.batch_size) == (
        "deepcluster_v2", "resnet50", False, 800, 4096)
    assert tuple(c.data.views) == ((2, 224, (0.14, 1.0)), (6, 96, (0.05, 0.14)))
    assert (tuple(v.prototypes), v.temperature, v.feat_dim, v.hidden_dim) == (
        (3000, 3000, 3000), 0.1, 128, 2048)
    assert (v.lr, v.final_lr, v.start_warmup, v.warmup_epochs, v.weight_decay) == (
        4.8, 0.0048, 0.3, 10, 1e-6)
    assert (v.freeze_prototypes_niters, v.kmeans_iterations, tuple(v.crops_for_assign)) == (
        300_000, 10, (0, 1))
    with pytest.raises(ValueError, match="unknown variant 'smok'"):
        config("imagenet_resnet50_deepcluster_v2", "smok")


@pytest.mark.parametrize("field,value,message", [
    ("model.name", "resnet", "config.model.name='resnet' is not a known architecture"),
    ("clustering.k", -1, "config.clustering.k=-1 must be an integer >= 2, or 0 for auto_k"),
    ("clustering.backend", "cuml", "config.clustering.backend='cuml'"),
    ("clustering.sampler", "balanced", "config.clustering.sampler='balanced'"),
    ("clustering.precision", "fp8", "config.clustering.precision='fp8' must be one of"),
    ("clustering.precision", "tf32_3x", "config.clustering.precision='tf32_3x' needs GPU devices"),
    ("data.image_size", 224, "config.data.image_size=224 does not fit alexnet_small"),
    ("data.data_dir", "/no/such/dir", "config.data.data_dir='/no/such/dir' is not a directory"),
    ("optim.lr", -1.0, "config.optim.lr=-1.0 must be a positive finite number"),
    ("data.view_cache", "ram", "config.data.view_cache='ram' must be one of"),
    ("data.view_cache_share", 1.5, "config.data.view_cache_share=1.5 must be in (0, 1]"),
    ("optim.lr_schedule", "step", "config.optim.lr_schedule='step' must be one of"),
    ("optim.lr_decay_epochs", -3, "config.optim.lr_decay_epochs=-3 must be a non-negative integer"),
])
def test_bad_values_name_the_field(field, value, message):
    c = digits()
    section, key = field.split(".")
    c[section][key] = value
    with pytest.raises(ConfigError) as e:
        validate(c, num_devices=4)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_cosine_schedule_needs_its_length():
    c = digits()
    c.optim.lr_schedule = "cosine"
    with pytest.raises(ConfigError, match=r"config.optim.lr_decay_epochs=0 must be a positive "
                                          r"integer with lr_schedule='cosine'"):
        validate(c, num_devices=4)
    c.optim.lr_decay_epochs = 30
    validate(c, num_devices=4)


def test_config_lib_is_a_foundation_and_each_component_checks_its_own_values():
    """config_lib imports no other dcjax module (a fresh interpreter loads only it); the allowed
    values in the errors are the implementations' own."""
    import subprocess
    import sys

    from conftest import ROOT

    from dcjax.clustering.sampler import SAMPLERS
    from dcjax.evaluate.knn import WEIGHTS

    loaded = subprocess.run([sys.executable, "-c", "import sys, dcjax.config_lib; print(sorted("
                             "m for m in sys.modules if m.startswith('dcjax')))"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "['dcjax', 'dcjax.config_lib']"
    for field, value, allowed in (("clustering.sampler", "x", SAMPLERS),
                                  ("eval.knn_weights", "x", WEIGHTS)):
        c = digits()
        section, key = field.split(".")
        c[section][key] = value
        with pytest.raises(ConfigError, match=re.escape(f"must be one of {allowed}")):
            validate(c, num_devices=4)


def test_opencv_decoder_needs_opencv(monkeypatch):
    import importlib.util

    from dcjax.data import checks

    c = digits()
    c.data.decoder = "opencv"
    validate(c, num_devices=4)
    real = importlib.util.find_spec
    monkeypatch.setattr(checks.importlib.util, "find_spec",
                        lambda name, *a: None if name == "cv2" else real(name, *a))
    with pytest.raises(ConfigError, match="config.data.decoder='opencv' needs OpenCV"):
        validate(c, num_devices=4)
    c.data.decoder = "fast"
    validate(c, num_devices=4)


def test_batch_not_divisible_by_devices():
    c = digits()
    c.batch_size = 66
    with pytest.raises(ConfigError, match="config.batch_size=66 is not divisible by the 4 devices"):
        validate(c, num_devices=4)


def test_k_larger_than_the_dataset():
    c = digits()
    c.clustering.k = 5000
    with pytest.raises(ConfigError, match="config.clustering.k=5000 but the dataset 'digits' has 1438"):
        validate_against_data(c, {"train": 1438, "test": 359})


def run_main(*overrides, tmp_path):
    return subprocess.run([sys.executable, "-m", "dcjax.main", "--config=configs/digits.py:smoke",
                           f"--workdir={tmp_path}/run", *overrides], cwd=ROOT,
                          capture_output=True, text=True)


@pytest.mark.parametrize("override,message", [
    ("--config.clustering.k=100000", "error: config.clustering.k=100000 but the dataset 'digits'"),
    ("--config.data.name=imagenet_missing", "error: dataset 'imagenet_missing' not found"),
])
def test_cli_bad_config_is_one_line_exit_2(override, message, tmp_path):
    result = run_main(override, tmp_path=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith(message)
    assert "Traceback" not in result.stderr


def test_k_zero_is_resolved_from_the_data_and_no_eval_split_is_needed():
    from dcjax.config_lib import resolve_auto

    c = digits()
    c.clustering.k = 0
    validate(c, num_devices=4)
    resolve_auto(c, {"train": 1438})
    assert c.clustering.k == 14  # auto_k: one cluster per 100 images, at least 10
    validate_against_data(c, {"train": 1438})  # eval_split 'test' absent: training needs none
    c.data.train_split = "unlabeled"
    with pytest.raises(ConfigError, match="train_split='unlabeled' is not a split"):
        validate_against_data(c, {"train": 1438})


def test_a_k_that_leaves_few_images_per_cluster_is_warned_about():
    from dcjax.config_lib import few_images_per_cluster

    c = make_config(**{"clustering.k": 500})
    line = few_images_per_cluster(c, 1438)
    assert line.startswith("warning: config.clustering.k=500 leaves 2.9 images per cluster")
    assert "k <= 143 keeps 10 or more" in line
    c.clustering.k = 143
    assert few_images_per_cluster(c, 1438) is None


def test_a_missing_eval_split_falls_to_the_held_out_split_prepare_wrote():
    from dcjax.config_lib import resolve_auto

    c = make_config(**{"data.eval_split": "validation"})
    assert resolve_auto(c, {"train": 100, "validation": 20, "test": 30}) == []
    assert c.data.eval_split == "validation"
    notes = resolve_auto(c, {"train": 100, "test": 30})
    assert c.data.eval_split == "test"
    assert notes == ["held-out split: 'test' (config.data.eval_split='validation' is not a split of "
                     f"{c.data.name!r}; it has ['test', 'train'])"]
    c.data.eval_split = "validation"
    assert resolve_auto(c, {"train": 100}) == [] and c.data.eval_split == "validation"
