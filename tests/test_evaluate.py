"""Evaluation protocols: linear probes, kNN, clustering quality, and the command line."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import ROOT, make_config
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.neighbors import KNeighborsClassifier

from dcjax.clustering.kmeans import init_centroids
from dcjax.config_lib import ConfigError
from dcjax.data.importer import prepare
from dcjax.evaluate.knn import knn_predict
from dcjax.evaluate.linear import Pooling, adaptive_matrix, choose_pooling
from dcjax.evaluate.protocols import cluster_quality
from dcjax.evaluate.run import evaluate
from dcjax.models import create_model
from dcjax.train import train_and_evaluate


def digits_smoke(**overrides):
    return make_config(**{"eval.batch_size": 32, "eval.linear_epochs": 1, "eval.knn_k": 5,
                          **overrides})


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    c = digits_smoke(num_epochs=1, pixel_baseline=False, eval_every_epochs=1)
    with c.unlocked():  # a second evaluator, as a config file would add it
        c.evals.pixel_clusters = dict(type="clustering", every_epochs=1, features="pixels")
        c.evals.comparison = dict(type="comparison", every_epochs=1)
        c.evals.knn50 = dict(type="knn", every_epochs=1, k=50, weights="uniform")  # beside knn
    train_and_evaluate(c, str(workdir))
    return workdir


@pytest.mark.slow
def test_evaluators_logged_during_training(trained_run):
    record = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[0])
    assert 0.1 < record["knn_top1"] <= 1.0 and 0.1 < record["knn_top1_pca_whitened"] <= 1.0
    # The same evaluator on demand gives the same values as during training.
    c = digits_smoke()
    pixels = evaluate(c, str(trained_run), "clustering", features="pixels")
    for key in ("nmi", "ari", "accuracy"):
        assert record[f"pixel_clusters_{key}"] == pytest.approx(pixels[key], abs=1e-9)
    assert record["time_knn"] > 0 and record["time_pixel_clusters"] > 0
    # Two kNN evaluators with their own k and weights, each equal to the protocol run on demand
    # with those settings.
    fifty = evaluate(digits_smoke(**{"eval.knn_k": 50, "eval.knn_weights": "uniform"}),
                     str(trained_run), "knn")
    assert record["knn50_top1"] == pytest.approx(fifty["features"]["fc7"], abs=1e-9)
    assert record["knn50_top1"] != record["knn_top1"]


def test_evaluators_are_built_from_config():
    from dcjax.evaluate.evaluators import TYPES, from_config

    c = digits_smoke()
    built = from_config(c)
    assert list(built) == ["knn"] and built["knn"].period() == 0
    c.eval_every_epochs = 3
    assert built["knn"].period() == 3
    with c.unlocked():
        c.evals.probe = dict(type="linear", every_epochs=2, features="network")
        c.evals.bad = dict(type="svm")
    with pytest.raises(ConfigError, match="evaluator type 'svm' must be one of"):
        from_config(c)
    del c.evals["bad"]
    assert from_config(c)["probe"].period() == 2 and set(TYPES) == {"linear", "knn", "clustering",
                                                                 "comparison"}


def test_each_evaluator_has_its_own_settings():
    from dcjax.evaluate.evaluators import from_config

    c = digits_smoke()
    with c.unlocked():
        c.evals.knn50 = dict(type="knn", k=50, weights="uniform")
        c.evals.probe = dict(type="linear", protocol="reference", epochs=2)
    built = from_config(c)
    assert (built["knn"].config.eval.knn_k, built["knn"].config.eval.knn_weights) == (5, "distance")
    assert (built["knn50"].config.eval.knn_k, built["knn50"].config.eval.knn_weights) == \
        (50, "uniform")
    assert c.eval.knn_k == 5  # the shared defaults are untouched
    probe = built["probe"].config.eval  # the reference probe, but the entry's epochs
    assert (probe.linear_epochs, probe.linear_lr, probe.linear_views) == (2, 0.01, "translate")
    for entry, message in ((dict(type="knn", depth=3), r"config.evals.x: depth is not a setting "
                                                       r"of a 'knn' evaluator \(its settings: "
                                                       r"every_epochs, features, batch_size, k, "
                                                       r"weights\)"),
                           (dict(type="knn", k=0), r"config.evals.x: config.eval.knn_k=0"),
                           (dict(type="linear", views="five"),
                            r"config.evals.x: config.eval.linear_views='five' must be one of")):
        with c.unlocked():
            c.evals.x = entry
        with pytest.raises(ConfigError, match=message):
            from_config(c)


def test_the_python_api_applies_the_evaluation_protocol_as_the_command_line_does(tmp_path):
    from dcjax import runner

    c = digits_smoke(**{"eval.protocol": "reference", "eval.linear_epochs": 3})
    runner.setup(c, str(tmp_path / "run"))  # what train_and_evaluate(c, ...) does first
    assert (c.eval.linear_epochs, c.eval.linear_views) == (90, "translate")
    c = digits_smoke(**{"eval.protocol": "reference", "eval.linear_epochs": 3})
    runner.setup(c, str(tmp_path / "run"), given={"eval.linear_epochs": 3})  # the command line's
    assert (c.eval.linear_epochs, c.eval.linear_views) == (3, "translate")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ kNN and clustering vs sklearn


@pytest.mark.parametrize("weights", ["distance", "uniform"])
def test_knn_equals_scikit_learn(weights):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16)) * 2
    bank_y = rng.integers(0, 5, 403)  # not a multiple of the 4 devices: padded inside
    bank = centres[bank_y] + rng.normal(size=(403, 16)) * 2.5
    query_y = rng.integers(0, 5, 150)
    queries = centres[query_y] + rng.normal(size=(150, 16)) * 2.5
    ours = knn_predict(bank.astype(np.float32), bank_y, queries.astype(np.float32), 5, k=20,
                       weights=weights, chunk_size=64)
    ref = KNeighborsClassifier(20, metric="cosine", weights=weights, algorithm="brute")
    expected = ref.fit(bank, bank_y).predict(queries)
    np.testing.assert_array_equal(ours, expected)
    assert 0.3 < np.mean(ours == query_y) < 1.0  # a non-trivial problem


def test_knn_ignores_padding_rows_and_checks_k():
    bank = np.eye(4, dtype=np.float32)
    labels = np.array([0, 1, -1, -1])  # two rows to ignore
    # The first query equals an ignored row: counted, it would be its only (exact) neighbour.
    pred = knn_predict(bank, labels, np.array([[0, 0, 1, 0], [0, 1, 0.1, 0]], np.float32), 2, k=2,
                       weights="distance")
    assert pred.tolist() == [0, 1]  # a tie at equal distance goes to the lower class
    with pytest.raises(ValueError, match="k=3"):
        knn_predict(bank, labels, bank, 2, k=3)


def test_cluster_quality_equals_scikit_learn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 600)
    x = (rng.normal(size=(4, 8)) * 3)[y] + rng.normal(size=(600, 8))
    x = x.astype(np.float32)
    ours = cluster_quality(x, y, 4, pca_dim=None, iterations=20, seed=3)
    init = np.asarray(init_centroids(x, 4, 3))
    ref = KMeans(4, init=init, n_init=1, max_iter=20, tol=0, algorithm="lloyd").fit(x)
    assert ours["nmi"] == pytest.approx(normalized_mutual_info_score(y, ref.labels_), abs=1e-9)
    assert ours["ari"] == pytest.approx(adjusted_rand_score(y, ref.labels_), abs=1e-9)
    assert ours["objective"] == pytest.approx(ref.inertia_, rel=1e-4)


# ------------------------------------------------------------------ pooling


def test_paper_pooling_at_224():
    shapes = dict(zip([f"conv{i}" for i in range(1, 6)],
                      [(1, 55, 55, 96), (1, 27, 27, 256), (1, 13, 13, 384), (1, 13, 13, 384),
                       (1, 13, 13, 256)]))
    pools = choose_pooling(create_model("alexnet", 10, image_size=224), 224, shapes, 9216)
    assert [p.dim for p in pools.values()] == [9600, 9216, 9600, 9600, 9216]
    x = jax.numpy.ones((2, 55, 55, 96))
    assert pools["conv1"](x).shape == (2, 9600)


def test_adaptive_pooling_bins_and_sizes():
    m = adaptive_matrix(7, 3)  # bins 0-2, 2-4, 4-6 (PyTorch AdaptiveAvgPool2d)
    np.testing.assert_allclose(m.sum(1), 1.0)
    assert [tuple(np.flatnonzero(r)) for r in m] == [(0, 1, 2), (2, 3, 4), (4, 5, 6)]
    pools = list(choose_pooling(create_model("alexnet_small", 10, image_size=32), 32,
                                {"conv1": (1, 32, 32, 32), "conv5": (1, 7, 7, 128)}, 9216).values())
    assert [p.grid for p in pools] == [16, 7] and pools[1].describe().endswith("none -> 6272")
    x = np.random.default_rng(0).normal(size=(2, 7, 7, 3)).astype(np.float32)
    out = Pooling(7, 3, grid=3)(jax.numpy.asarray(x)).reshape(2, 3, 3, 3)
    np.testing.assert_allclose(out[:, 1, 2], x[:, 2:5, 4:7].mean((1, 2)), rtol=1e-5)


# ------------------------------------------------------------------ protocols end to end


def stripes(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: horizontal stripes, class 1: vertical (random period, phase, contrast, noise)."""
    y = rng.integers(0, 2, n)
    grid = np.arange(32)
    x = np.empty((n, 32, 32), np.uint8)
    for i in range(n):
        period, phase = rng.integers(4, 9), rng.integers(0, 8)
        wave = (((grid + phase) // (period // 2)) % 2).astype(np.float32)
        img = np.tile(wave[:, None], (1, 32)) if y[i] == 0 else np.tile(wave[None, :], (32, 1))
        img = 60 + rng.uniform(80, 180) * img + rng.normal(0, 10, (32, 32))
        x[i] = np.clip(img, 0, 255)
    return x, y


@pytest.mark.parametrize("views,schedule", [("augmented", "cosine"), ("center", "cosine"),
                                            ("translate", "reference")])
@pytest.mark.slow
def test_linear_probe_separates_a_trivial_dataset(tmp_path, views, schedule):
    rng = np.random.default_rng(0)
    (x_tr, y_tr), (x_te, y_te) = stripes(256, rng), stripes(128, rng)
    np.savez(tmp_path / "stripes.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    prepare(str(tmp_path / "stripes.npz"), "stripes", class_names=["horizontal", "vertical"],
            overwrite=True)
    # The untrained network's deeper activations are large: a smaller step than ImageNet's 0.01.
    c = digits_smoke(**{"data.name": "stripes", "clustering.k": 2, "eval.linear_epochs": 4,
                        "eval.crop_scale": (0.5, 1.0), "eval.linear_lr": 0.001,
                        "eval.linear_views": views, "eval.linear_schedule": schedule})
    result = evaluate(c, str(tmp_path), "linear", init="random")
    top1 = {name: r["top1"] for name, r in result["layers"].items()}
    assert min(top1.values()) >= 0.95, top1
    name = "linear_random" if views == "augmented" else f"linear_{views}_random"
    saved = json.loads((tmp_path / "eval" / f"{name}.json").read_text())
    assert saved["init"] == "random" and saved["views"] == views
    assert saved["schedule"] == schedule
    assert (saved["crop_scale"] is not None) == (views == "augmented")


@pytest.mark.slow
def test_protocols_on_a_trained_run(trained_run):
    c = digits_smoke()
    linear = evaluate(c, str(trained_run), "linear")
    assert set(linear["layers"]) == {f"conv{i}" for i in range(1, 6)}
    assert linear["checkpoint_step"] > 0 and linear["test_images"] == 359
    assert all(0.1 < r["top1"] <= 1.0 for r in linear["layers"].values())  # above chance (10 classes)
    knn = evaluate(c, str(trained_run), "knn")
    assert set(knn["features"]) == {"fc7", "fc7_pca_whitened"}
    assert all(0.1 < v <= 1.0 for v in knn["features"].values())
    quality = evaluate(c, str(trained_run), "clustering", features="pixels")
    assert quality["k"] == 10 and 0.3 < quality["nmi"] <= 1.0  # digits pixels cluster well
    pixels = evaluate(c, str(trained_run), "linear", features="pixels")
    assert pixels["layers"]["pixels"]["top1"] > 0.5
    names = sorted(p.name for p in (trained_run / "eval").iterdir())
    assert names == ["clustering_pixels.json", "knn.json", "linear.json", "linear_pixels.json"]


@pytest.mark.slow
def test_comparison_on_demand_equals_the_end_of_run_one(trained_run):
    # One epoch: the network the evaluator saw after epoch 0 is the final one.
    summary = json.loads((trained_run / "summary.json").read_text())
    record = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[0])
    assert record["comparison_nmi"] == pytest.approx(summary["final_nmi_labels"], abs=1e-6)
    assert record["comparison_random_init_nmi"] == pytest.approx(
        summary["random_init_nmi_labels"], abs=1e-6)
    assert 0.3 < record["comparison_pixels_nmi"] <= 1.0  # digits pixels cluster well
    assert record["comparison_nmi_after_relu"] == pytest.approx(
        summary["final_nmi_labels_after_relu"], abs=1e-6)
    assert record["comparison_random_init_nmi_after_relu"] == pytest.approx(
        summary["random_init_nmi_labels_after_relu"], abs=1e-6)
    result = evaluate(digits_smoke(), str(trained_run), "comparison")
    assert result["k"] == 10 and result["images"] == 359 and result["restarts"] == 10
    assert result["deepcluster"]["nmi"] == pytest.approx(record["comparison_nmi"], abs=1e-6)
    assert result["pixels"]["nmi"] == pytest.approx(record["comparison_pixels_nmi"], abs=1e-6)
    assert len(set(result["deepcluster"]["nmi_runs"])) > 1
    saved = json.loads((trained_run / "eval" / "comparison.json").read_text())
    assert saved["checkpoint_step"] > 0 and saved["random_init"]["nmi"] == result["random_init"]["nmi"]


def run_cli(*args, cwd=ROOT):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "dcjax.evaluate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_command_line_uses_the_runs_config(trained_run):
    out = run_cli(f"--workdir={trained_run}", "--protocol=clustering", "--init=random",
                  "--config.eval.batch_size=64")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| fc7 | 10 |" in out.stdout
    result = json.loads((trained_run / "eval" / "clustering_random.json").read_text())
    assert result["init"] == "random" and result["checkpoint_step"] is None


@pytest.mark.slow
def test_command_line_errors_are_one_line(tmp_path, trained_run):
    out = run_cli(f"--workdir={tmp_path}", "--protocol=knn")
    assert out.returncode == 2 and out.stderr.strip().startswith("error:")
    assert "config.json" in out.stderr and "Traceback" not in out.stderr
    out = run_cli(f"--workdir={trained_run}", "--protocol=knn", "--step=123456")
    assert out.returncode == 2 and "--step=123456" in out.stderr and "Traceback" not in out.stderr
    out = run_cli(f"--workdir={trained_run}", "--protocol=linear", "--config.eval.knn_weights=x")
    assert out.returncode == 2 and "knn_weights" in out.stderr


def test_missing_checkpoint_is_a_config_error(tmp_path):
    from dcjax.runs import load_network

    with pytest.raises(ConfigError, match="no checkpoint"):
        load_network(digits_smoke(), tmp_path, "trained")


@pytest.mark.slow
def test_sweep_of_two_values(tmp_path):
    root = tmp_path / "sweep"
    args = [sys.executable, str(ROOT / "launch" / "sweep.py"), "--config=configs/digits.py:smoke",
            f"--root={root}", "--sweep=clustering.k=5,10", "--set=eval.knn_k=5",
            "--set=eval.linear_epochs=1", "--eval=knn,linear_center"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    printed = subprocess.run(args + ["--print_only"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=60)
    assert printed.returncode == 0 and len(printed.stdout.strip().splitlines()) == 6
    assert "--config.eval.linear_views=center" in printed.stdout
    assert not root.exists()  # printing runs nothing
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    import csv

    rows = list(csv.DictReader(open(root / "sweep.csv")))
    assert [r["clustering.k"] for r in rows] == ["5", "10"]
    assert all(0.0 < float(r["knn_fc7"]) <= 1.0 and r["final_nmi_labels"] for r in rows)
    assert all(0.0 < float(r["linear_center_best"]) <= 1.0 for r in rows)
    assert "| clustering.k |" in (root / "sweep.md").read_text()
    assert (root / "sweep.png").stat().st_size > 1000
    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("done already") == 6


@pytest.mark.slow
def test_table_gathers_the_rows(trained_run):
    from dcjax.evaluate.table import table

    evaluate(digits_smoke(), str(trained_run), "knn", init="random")
    compared = evaluate(digits_smoke(), str(trained_run), "comparison")
    text = table(trained_run)
    lines = text.splitlines()
    assert lines[0].startswith("| features | conv1 |") and len(lines) == 5
    assert lines[0].rstrip().endswith("| comparison NMI |")
    assert lines[2].startswith("| DeepCluster | ") and "-" not in lines[2].split("|")[2]
    assert lines[3].startswith("| random init | - |")  # only its kNN was run
    # The comparison column: one file, three rows.
    for line, key in zip(lines[2:], ("deepcluster", "random_init", "pixels")):
        assert line.split("|")[-2].strip() == f"{compared[key]['nmi']:.4f}"


@pytest.mark.slow
def test_center_view_probe_and_its_table(trained_run):
    from dcjax.evaluate.table import table

    c = digits_smoke(**{"eval.linear_views": "center", "eval.linear_epochs": 2})
    result = evaluate(c, str(trained_run), "linear")
    assert result["views"] == "center" and result["crop_scale"] is None
    assert result["test_images"] == 359 and result["feature_seconds"] > 0
    assert all(0.1 < r["top1"] <= 1.0 for r in result["layers"].values())  # above chance
    assert all(np.isfinite(r["final_train_loss"]) for r in result["layers"].values())
    assert (trained_run / "eval" / "linear_center.json").exists()
    row = table(trained_run, "center").splitlines()[2].split("|")
    expected = [f"{100 * r['top1']:.2f}" for r in result["layers"].values()]
    assert [cell.strip() for cell in row[2:7]] == expected


def test_bad_linear_views_is_a_config_error():
    from dcjax.validation import validate

    with pytest.raises(ConfigError, match="linear_views"):
        validate(digits_smoke(**{"eval.linear_views": "tencrop"}))
    with pytest.raises(ConfigError, match="linear_schedule"):
        validate(digits_smoke(**{"eval.linear_schedule": "step"}))


def test_reference_probe_schedule_is_eval_linears():
    import jax.numpy as jnp

    from dcjax.evaluate.linear import probe_optimizer

    c = digits_smoke(**{"eval.linear_schedule": "reference", "eval.linear_lr": 0.5,
                        "eval.linear_weight_decay": 0.1, "eval.linear_momentum": 0.0})
    tx = probe_optimizer(c, 1000)
    params = {"w": jnp.zeros(())}
    state = tx.init(params)
    for step in range(4):  # gradient 1 and w = 0: the update is -lr(step) (decay term is 0 * wd)
        updates, state = tx.update({"w": jnp.ones(())}, state, params)
        expected = 0.5 / np.sqrt(1 + 0.5 * 0.1 * step)
        np.testing.assert_allclose(float(updates["w"]), -expected, rtol=1e-6)


# ------------------------------------------------------------------ the reference probe protocol


def test_multi_view_test_averages_the_softmax_not_the_logits():
    import jax.numpy as jnp
    import optax

    from dcjax.evaluate.linear import make_probe_fns

    # One image, three views; each view's 2-d "feature" is its logits (identity head). One view
    # says class 0 by a wide margin, two say class 1 by a narrow one: the mean logits [3.3, 2] pick
    # class 0, the mean softmax [0.37, 0.63] class 1 (the reference averages the softmax).
    views = np.array([[[[[10.0, 0.0]]], [[[0.0, 3.0]]], [[[0.0, 3.0]]]]], np.float32)
    assert views[0, :, 0, 0].mean(0).argmax() == 0
    probes = {"x": {"kernel": jnp.eye(2), "bias": jnp.zeros(2)}}
    _, eval_step = make_probe_fns(lambda v, x: {"x": x.reshape(x.shape[0], -1)},
                                  optax.sgd(0.1), normalize=False)
    count = eval_step(probes, None, (), jnp.asarray(views), jnp.array([1]), jnp.array([True]))
    assert int(count["x"]) == 1
    count = eval_step(probes, None, (), jnp.asarray(views[:, 0]), jnp.array([1]), jnp.array([True]))
    assert int(count["x"]) == 0  # a single view ([B, H, W, C]) is scored by its own logits


def test_reference_protocol_sets_eval_linears_fields_but_not_the_given_ones():
    from dcjax.config_lib import REFERENCE_PROBE, apply_eval_protocol
    from dcjax.validation import validate

    c = digits_smoke()
    apply_eval_protocol(c)
    assert c.eval.linear_epochs == 1  # 'dcjax': nothing changes
    c = digits_smoke(**{"eval.protocol": "reference", "eval.linear_epochs": 3})
    apply_eval_protocol(c, {"eval.protocol": "reference", "eval.linear_epochs": 3})
    assert c.eval.linear_epochs == 3  # given on the command line: kept
    assert (c.eval.linear_lr, c.eval.linear_weight_decay, c.eval.linear_schedule) == \
        (0.01, 1e-7, "reference")
    assert (c.eval.linear_views, c.eval.linear_test_views, c.eval.linear_test_every) == \
        ("translate", "ten_crop", 1)
    assert REFERENCE_PROBE["linear_epochs"] == 90 and c.eval.batch_size == 256
    validate(c)
    for field, value in (("eval.protocol", "paper"), ("eval.linear_test_views", "five"),
                         ("eval.linear_test_every", -1)):
        with pytest.raises(ConfigError, match=field.split(".")[1]):
            validate(digits_smoke(**{field: value}))
    with pytest.raises(ConfigError, match="ten_crop"):
        validate(digits_smoke(**{"eval.linear_views": "center", "eval.linear_test_views": "ten_crop"}))


@pytest.mark.slow
def test_reference_protocol_on_the_command_line(trained_run):
    from dcjax.evaluate.table import table

    out = run_cli(f"--workdir={trained_run}", "--protocol=linear", "--config.eval.protocol=reference",
                  "--config.eval.linear_epochs=3", "--config.eval.batch_size=64")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "best top-1 on test (after epochs)" in out.stdout
    result = json.loads((trained_run / "eval" / "linear_reference.json").read_text())
    assert (result["protocol"], result["views"], result["test_views"]) == \
        ("reference", "translate", "ten_crop")
    assert (result["epochs"], result["batch_size"], result["weight_decay"]) == (3, 64, 1e-7)
    for r in result["layers"].values():
        curve = r["top1_after_epochs"]
        assert list(curve) == ["1", "2", "3"] and r["top1"] == curve["3"]
        assert r["best_top1"] == max(curve.values()) and curve[str(r["best_after_epochs"])] == \
            r["best_top1"]
        assert 0.1 < r["top1"] <= 1.0  # above chance
    best = table(trained_run, "reference", best=True).splitlines()
    assert "conv1 (best on test)" in best[0]
    cells = [c.strip() for c in best[2].split("|")[2:7]]
    assert cells == [f"{100 * r['best_top1']:.2f}" for r in result["layers"].values()]


def test_mean_nmi_averages_initialisations():
    from dcjax.evaluate.protocols import mean_nmi

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 50)
    separated = (np.eye(4, 8)[y] * 10 + rng.normal(size=(200, 8)) * 0.1).astype(np.float32)
    result = mean_nmi(separated, y, 4, restarts=3, iterations=20, seed=0, chunk_size=64)
    assert len(result["nmi_runs"]) == 3 and result["nmi"] == pytest.approx(np.mean(result["nmi_runs"]))
    assert min(result["nmi_runs"]) > 0.7  # well-separated blobs are found from any start
    noise = rng.normal(size=(200, 8)).astype(np.float32)
    result = mean_nmi(noise, y, 4, restarts=3, iterations=20, seed=0, chunk_size=64)
    assert result["nmi"] < 0.2 and result["nmi_std"] > 0  # no structure; the starts differ
