"""The DeepCluster loop end to end: epochs, head reset, multi-device step, checkpoints and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import ROOT, make_config
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dcjax.features import layout_index
from dcjax.models import create_model
from dcjax.step import HEAD, create_train_state, lr_scale, make_train_step, reset_head
from dcjax.train import train_and_evaluate

REQUIRED = ("epoch", "loss", "kmeans_objective", "nmi_prev", "nmi_labels", "ari_labels",
            "nonempty_clusters", "largest_cluster_frac", "time_extract", "time_pca", "time_kmeans",
            "time_train")


def tiny(**overrides):
    return make_config(**{"num_epochs": 2, "log_every_steps": 5, **overrides})


def read_metrics(workdir) -> list[dict]:
    return [json.loads(line) for line in Path(workdir, "metrics.jsonl").read_text().splitlines()]


def without_times(records):
    return [{k: v for k, v in r.items() if not k.startswith("time_") and "per_sec" not in k}
            for r in records]


@pytest.mark.slow
def test_two_epochs_end_to_end(tmp_path):
    final = train_and_evaluate(tiny(), str(tmp_path))
    records = read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [0, 1]
    for r in records:
        assert all(key in r for key in REQUIRED)
        assert r["nonempty_clusters"] == 10  # k = 10 and no cluster left empty
        assert 0.0 <= r["nmi_labels"] <= 1.0 and np.isfinite(r["loss"])
    assert records[0]["nmi_prev"] is None and 0.0 <= records[1]["nmi_prev"] <= 1.0
    assert final["epoch"] == 1 and "pixel_kmeans_nmi_labels" in final
    assert 0.0 <= final["final_nmi_labels"] <= 1.0
    # The end-of-run comparison: k = the 10 classes on the 359 held-out digits, 10 initialisations.
    comparison = final["comparison"]
    assert (comparison["k"], comparison["split"], comparison["images"]) == (10, "test", 359)
    for key, field in (("deepcluster", "final_nmi_labels"), ("random_init", "random_init_nmi_labels"),
                       ("pixels", "pixel_kmeans_nmi_labels")):
        runs = comparison[key]["nmi_runs"]
        assert len(runs) == comparison["restarts"] == 10 and len(set(runs)) > 1  # seeds differ
        assert final[field] == comparison[key]["nmi"] == pytest.approx(np.mean(runs))
        assert 0.3 < final[field] <= 1.0  # digits cluster far above chance in every space
    # The networks also on ReLU(fc7): same k-means seeds, other features, so other values.
    for key, field in (("deepcluster", "final_nmi_labels_after_relu"),
                       ("random_init", "random_init_nmi_labels_after_relu")):
        relu = comparison[key]["after_relu"]
        assert final[field] == relu["nmi"] == pytest.approx(np.mean(relu["nmi_runs"]))
        assert 0.3 < relu["nmi"] <= 1.0 and relu["nmi_runs"] != comparison[key]["nmi_runs"]
    assert "after_relu" not in comparison["pixels"]
    assert 0.0 <= final["final_clusters_nmi_labels"] <= 1.0  # the exported clustering (k = 10)
    for name in ("nmi.png", "cluster_sizes.png", "phase_times.png", "clusters.png",
                 "conv1_filters.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000
    assert (tmp_path / "config.json").exists() and (tmp_path / "summary.json").exists()
    assert any((tmp_path / "tensorboard").iterdir())
    # Running again on the finished workdir resumes at the end and trains nothing more.
    again = train_and_evaluate(tiny(), str(tmp_path))
    assert again["loss"] == final["loss"] and len(read_metrics(tmp_path)) == 2


@pytest.mark.slow
def test_reassign_reclusters_every_n_epochs(tmp_path):
    train_and_evaluate(tiny(reassign=2, num_epochs=3, pixel_baseline=False), str(tmp_path))
    records = read_metrics(tmp_path)
    clustered = [r["kmeans_objective"] is not None for r in records]
    assert clustered == [True, False, True]
    assert records[2]["nmi_prev"] is not None
    from dcjax.report import table

    assert table(records).count("\n") == 4 and "nmi_labels" in table(records)


def test_device_major_layout_index():
    # 2 batches of 4 on 2 devices, 7 images: device 0 holds rows 0,1 of each batch.
    np.testing.assert_array_equal(layout_index(2, 4, 2, 7), [0, 1, 4, 5, 2, 3, 6, -1])


def test_head_reset_keeps_body_and_its_momentum():
    c = tiny()
    model = create_model("alexnet_small", 10, image_size=32, widths=(8, 8, 8, 8, 8), fc_dim=16)
    state = create_train_state(model, c, jax.random.key(0))
    step = jax.jit(make_train_step(model, c))
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), np.uint8))
    state, _ = step(state, images, jnp.arange(8) % 10, jax.random.key(1))
    new = reset_head(state, c, jax.random.key(5))
    kernel = np.asarray(new.params[HEAD]["kernel"])
    assert not np.allclose(kernel, state.params[HEAD]["kernel"])
    assert kernel.std() == pytest.approx(0.01, rel=0.2) and np.all(new.params[HEAD]["bias"] == 0)
    jax.tree.map(np.testing.assert_array_equal, new.body_opt_state, state.body_opt_state)
    np.testing.assert_array_equal(new.params["fc7"]["kernel"], state.params["fc7"]["kernel"])
    # The body's optimizer carries momentum; the head's is SGD without momentum (empty state).
    assert any(np.abs(x).sum() > 0 for x in jax.tree.leaves(new.body_opt_state))
    assert all(np.size(x) == 0 for x in jax.tree.leaves(new.head_opt_state))


def test_cosine_schedule_decays_the_body_and_keeps_the_head():
    c = tiny()
    c.optim.lr_schedule, c.optim.lr_decay_epochs = "cosine", 2
    scales = [float(lr_scale(c, s, steps_per_epoch=2)) for s in (0, 1, 2, 3, 4, 9)]
    np.testing.assert_allclose(scales, [1, (1 + np.cos(np.pi / 4)) / 2, 0.5,
                                        (1 + np.cos(3 * np.pi / 4)) / 2, 0, 0], atol=1e-6)
    model = create_model("alexnet_small", 10, image_size=32, widths=(8, 8, 8, 8, 8), fc_dim=16)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), np.uint8))
    labels, key = jnp.arange(8) % 10, jax.random.key(1)
    params = {}
    for schedule in ("constant", "cosine"):
        c.optim.lr_schedule = schedule
        step = jax.jit(make_train_step(model, c, steps_per_epoch=1))
        state = create_train_state(model, c, jax.random.key(0))
        states = [state]
        for _ in range(3):
            state, _ = step(state, images, labels, key)
            states.append(state)
        params[schedule] = [s.params for s in states]
    # Step 0 is at full rate in both; from step 2 (= lr_decay_epochs * steps_per_epoch) the cosine
    # schedule's body updates are 0, while the constant one keeps moving; the head moves in both.
    for name in ("conv1", "fc7", HEAD):
        np.testing.assert_array_equal(params["cosine"][1][name]["kernel"],
                                      params["constant"][1][name]["kernel"])
        assert not np.allclose(params["constant"][3][name]["kernel"],
                               params["constant"][2][name]["kernel"])
    for name in ("conv1", "fc7"):
        np.testing.assert_array_equal(params["cosine"][3][name]["kernel"],
                                      params["cosine"][2][name]["kernel"])
        assert not np.allclose(params["cosine"][2][name]["kernel"],
                               params["cosine"][1][name]["kernel"])  # step 1: half the rate
    assert not np.allclose(params["cosine"][3][HEAD]["kernel"], params["cosine"][2][HEAD]["kernel"])


def test_four_devices_give_the_same_step_as_one():
    assert jax.device_count() == 4
    c = tiny()
    model = create_model("alexnet_small", 10, image_size=32, widths=(8, 8, 8, 8, 8), fc_dim=16)
    step = make_train_step(model, c)
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, 255, (16, 32, 32, 3), np.uint8), rng.integers(0, 10, 16))
               for _ in range(3)]
    results = []
    for devices in (jax.devices()[:1], jax.devices()):
        mesh = Mesh(np.asarray(devices), ("data",))
        rows, rep = NamedSharding(mesh, PartitionSpec("data")), NamedSharding(mesh, PartitionSpec())
        state = jax.device_put(create_train_state(model, c, jax.random.key(0)), rep)
        losses = []
        for images, labels in batches:
            state, m = jax.jit(step)(state, jax.device_put(images, rows),
                                     jax.device_put(labels.astype(np.int32), rows),
                                     jax.device_put(jax.random.key(3), rep))
            losses.append(float(m["loss"]))
        results.append((losses, state))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 results[0][1].params, results[1][1].params)


def final_params(workdir):
    manager = ocp.CheckpointManager(Path(workdir, "checkpoints").absolute(),
                                    item_names=("state", "arrays", "meta"))
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return step, restored["state"]["params"]


def run_cli(workdir, *extra, env_extra=None, wait=True):
    cmd = [sys.executable, "-m", "dcjax.main", "--config=configs/digits.py:smoke",
           f"--workdir={workdir}", "--config.num_epochs=2", "--config.checkpoint_every_steps=7",
           *extra]
    env = dict(os.environ, **(env_extra or {}))
    if wait:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=env)


def wait_for_checkpoint(workdir, proc, timeout=240):
    ckpt = Path(workdir, "checkpoints")
    start = time.time()
    while time.time() - start < timeout:
        if ckpt.exists() and any(p.name.isdigit() for p in ckpt.iterdir()):
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before its first checkpoint: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters_and_metrics(tmp_path):
    clean = run_cli(tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr[-2000:]
    proc = run_cli(tmp_path / "killed", wait=False)
    wait_for_checkpoint(tmp_path / "killed", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps_at_kill = sorted(int(p.name) for p in (tmp_path / "killed" / "checkpoints").iterdir()
                           if p.name.isdigit())
    assert steps_at_kill and steps_at_kill[-1] < 88  # killed before the end (2 x 44 batches)
    resumed = run_cli(tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from epoch" in resumed.stdout
    step_a, params_a = final_params(tmp_path / "clean")
    step_b, params_b = final_params(tmp_path / "killed")
    assert step_a == step_b == 88
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), params_a,
                 params_b)
    assert without_times(read_metrics(tmp_path / "clean")) == without_times(
        read_metrics(tmp_path / "killed"))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    proc = run_cli(tmp_path, wait=False)
    wait_for_checkpoint(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "the last checkpoint (epoch 0, batch" in proc.stderr.read()
    finished = run_cli(tmp_path)
    assert finished.returncode == 0 and "resuming from epoch" in finished.stdout
    assert len(read_metrics(tmp_path)) == 2


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path):
    first = run_cli(tmp_path, "--config.num_epochs=1")
    assert first.returncode == 0, first.stderr[-2000:]
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) >= 2
    latest = tmp_path / "checkpoints" / str(steps[-1])
    for f in (latest / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    second = run_cli(tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"checkpoint {steps[-1]} is unreadable" in second.stdout
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [0, 1]


def test_pseudo_labels_do_not_depend_on_the_device_layout():
    """The same config on 1 device, on 4, and on 4 with another batch size: the extraction buffer
    holds the images at other rows (device-major, padded), yet k-means starts from the same images
    (drawn by dataset index) and the first epoch's pseudo-labels are the same."""
    from dcjax.clustering.kmeans import init_centroids
    from dcjax.data.datasets import open_split
    from dcjax.models import from_config
    from dcjax.pseudolabels import cluster_network
    from dcjax.step import make_feature_fn

    c = make_config(**{"clustering.backend": "jax", "data.view_cache": "off"})
    source, _ = open_split(c.data.name, c.data.train_split)
    model = from_config(c, c.clustering.k)
    state = create_train_state(model, c, jax.random.key(c.seed))
    feature_fn = jax.jit(make_feature_fn(model))
    got = {}
    for devices, batch in ((1, 64), (4, 64), (4, 48)):
        c.batch_size = batch
        mesh = Mesh(np.asarray(jax.devices()[:devices]), ("data",))
        result = cluster_network(c, feature_fn, (state.params, state.batch_stats), source, mesh,
                                 seed=5, keep_features=True)
        f = result.features
        first = np.asarray(init_centroids(result.reduced, c.clustering.k, 5, f.valid, f.image))
        # The k images those initial centroids are (their rows' dataset indices).
        rows = [int(np.flatnonzero(np.all(np.asarray(result.reduced)[f.valid] == v, axis=1))[0])
                for v in first]
        got[devices, batch] = (f.image[f.valid][rows], result.assignment, first, f.image)
    base = got[1, 64]
    for key in ((4, 64), (4, 48)):  # the images sit at other rows of the buffer
        assert not np.array_equal(got[key][3], base[3]), key
    for value in got.values():
        np.testing.assert_array_equal(value[0], base[0])  # the same images, in the same order
        np.testing.assert_allclose(value[2], base[2], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(value[1], base[1])  # the same pseudo-labels


def test_progress_is_plain_lines_in_a_log_and_the_epoch_line_says_the_time_left(capsys,
                                                                                monkeypatch):
    import time as time_module

    from dcjax import features
    from dcjax.train import time_left

    monkeypatch.setattr(features, "LOG_PROGRESS_SECONDS", 0.01)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    for _ in features.progress(range(5), total=5, desc="training epoch 2 (3 of 9)",
                               images_per_step=128):
        time_module.sleep(0.03)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) >= 2 and "\r" not in out
    assert all(line.startswith("training epoch 2 (3 of 9):") for line in lines)
    assert "img/s" in out and "/640" in out  # images, not batches: 5 batches of 128
    records = [{"time_extract": 30.0, "time_train": 60.0}] + [
        {"time_extract": 1.0, "time_train": t} for t in (9.0, 10.0, 50.0)]
    assert time_left(records, 10) == " | 6 epochs left, about 0:01:06"  # median 11 s, epoch 0 out
    assert time_left(records[:1], 3) == " | 2 epochs left, about 0:03:00"
    assert time_left(records, 4) == ""


@pytest.mark.slow
def test_commands_keep_compiled_programs_for_the_next_call(tmp_path):
    """JAX's persistent compilation cache lives in the dcjax cache folder; a second run loads
    from it and trains to the same records."""
    cache = tmp_path / "cache"
    env = {"DCJAX_CACHE_DIR": str(cache)}
    first = run_cli(tmp_path / "a", "--config.num_epochs=1", env_extra=env)
    assert first.returncode == 0, first.stderr[-2000:]
    entries = sorted(p.name for p in (cache / "jax").iterdir())
    assert entries  # compiled programs were written
    second = run_cli(tmp_path / "b", "--config.num_epochs=1", env_extra=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert without_times(read_metrics(tmp_path / "a")) == without_times(read_metrics(tmp_path / "b"))
    off = run_cli(tmp_path / "c", "--config.num_epochs=1",
                  env_extra={"DCJAX_CACHE_DIR": str(tmp_path / "other"),
                             "DCJAX_COMPILATION_CACHE": "0"})
    assert off.returncode == 0 and not (tmp_path / "other" / "jax").exists()


@pytest.mark.slow
def test_rerunning_a_finished_run_does_nothing(tmp_path):
    first = run_cli(tmp_path, "--config.num_epochs=1")
    assert first.returncode == 0, first.stderr[-2000:]
    def written():  # every file but the workdir lock, which each run takes
        return {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")
                if p.is_file() and p.name != ".lock"}

    files = written()
    again = run_cli(tmp_path, "--config.num_epochs=1")
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.startswith("the run is complete (1 epoch, step 44): nothing to do")
    assert written() == files
