"""DeepCluster-v2 (dcjax/methods/deepcluster_v2.py): its spherical k-means against a NumPy
transcription of the reference's `cluster_memory`, its prototypes frozen for the first steps, its
memory bank in the checkpoint (a SIGKILLed run resumes to the uninterrupted run's parameters)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, make_config

from dcjax import runner
from dcjax.methods.deepcluster_v2 import spherical_kmeans


def reference_kmeans(bank: np.ndarray, init: np.ndarray, iterations: int):
    """main_deepclusterv2.py's loop: E step by dot product, M step on non-empty clusters, every
    centroid L2-normalised, a final E step."""
    c = bank[init].copy()
    for _ in range(iterations):
        a = np.argmax(bank @ c.T, axis=1)
        for k in range(len(c)):
            if np.any(a == k):
                c[k] = bank[a == k].mean(0)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
    return c, np.argmax(bank @ c.T, axis=1)


@pytest.mark.parametrize("rows,k,chunk", [(500, 12, 8192), (1000, 40, 128)])
def test_spherical_kmeans_is_the_references(rows, k, chunk):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16))
    x = centres[rng.integers(0, 8, rows)] + 0.7 * rng.normal(size=(rows, 16))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    init = rng.permutation(rows)[:k]
    want_c, want_a = reference_kmeans(x.astype(np.float64), init, 10)
    got_c, got_a = jax.jit(spherical_kmeans, static_argnums=(2, 3))(
        jnp.asarray(x), jnp.asarray(init), 10, chunk)
    assert np.mean(np.asarray(got_a) == want_a) > 0.995  # float32 against float64: ties aside
    np.testing.assert_allclose(np.linalg.norm(np.asarray(got_c), axis=1), 1.0, rtol=1e-5)
    empty = np.setdiff1d(np.arange(k), want_a)  # clusters that ended empty kept their centroid
    assert len(np.setdiff1d(np.arange(k), np.asarray(got_a))) == len(empty)


def v2_config(num_epochs=2, **overrides):
    """A small AlexNet trunk (any registered architecture is a trunk) on the digits, four 32 px
    views (two for the bank), two heads."""
    return make_config(**{
        "method": "deepcluster_v2", "num_epochs": num_epochs, "data.eval_split": "",
        "pixel_baseline": False, "log_every_steps": 5,
        "data.views": ((2, 32, (0.3, 1.0)), (2, 32, (0.1, 0.3))),
        "deepcluster_v2.prototypes": (20, 30), "deepcluster_v2.hidden_dim": 64,
        "deepcluster_v2.feat_dim": 32, "deepcluster_v2.lr_epochs": 3,
        "deepcluster_v2.warmup_epochs": 1, "deepcluster_v2.freeze_prototypes_niters": 30,
        "deepcluster_v2.lr": 0.3, "deepcluster_v2.final_lr": 0.003,
        "deepcluster_v2.start_warmup": 0.03, **overrides})


@pytest.mark.slow
def test_a_deepcluster_v2_epoch_through_the_runner(tmp_path):
    """The bank is filled before epoch 0 and clustered; the prototypes are the centroids and stay
    so while frozen; the loss and the records are those of the method."""
    c = v2_config(1, **{"deepcluster_v2.freeze_prototypes_niters": 100})
    final = runner.train_and_evaluate(c, str(tmp_path))
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert record["nonempty_clusters"] > 10 and record["nmi_prev"] is None
    assert 0 <= record["nmi_labels"] <= 1 and np.isfinite(record["loss"])
    from test_train import final_params

    step, params = final_params(tmp_path)
    assert step == 44 < 100  # every step of the epoch within the frozen period
    for h in (0, 1):  # the prototypes are unit-norm centroids, untouched by the 44 steps
        kernel = np.asarray(params["head"][f"prototypes{h}"]["kernel"])
        np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)
    assert final["epoch"] == 0


@pytest.mark.slow
def test_targets_are_the_prototypes_own_assignment_of_the_bank(tmp_path):
    """After an epoch's clustering, every image's target under head h is the prototype of head h
    nearest to that image's row in bank h mod 2 (the bank the head clustered), and the bank rows
    hold the images and labels of epoch 0's order."""
    c = v2_config(1)
    run = runner.setup(c, str(tmp_path / "run"))
    method = run.method
    state, mstate, record = method.begin_epoch(method.init_state(), method.new_method_state(), 0)
    index = np.asarray(state.bank_index)
    order = method._order(0)[: method.rows]
    np.testing.assert_array_equal(index, order)  # row r holds the image at position r
    labels = np.array([run.source[int(i)]["label"] for i in order[:64]])
    np.testing.assert_array_equal(np.asarray(state.bank_label)[:64], labels)
    for h in range(2):
        bank = np.asarray(state.bank[h % 2])
        prototypes = np.asarray(state.params["head"][f"prototypes{h}"]["kernel"])
        nearest = np.argmax(bank @ prototypes, axis=1)
        assert np.mean(nearest == mstate.assignment[h][index]) > 0.999  # float ties aside
    assert record["nonempty_clusters"] == len(np.unique(mstate.assignment[0][index]))


@pytest.mark.slow
def test_sigkills_resume_deepcluster_v2_exactly(tmp_path):
    """SIGKILLs in the bank's first pass, in k-means, in training and while a checkpoint is
    written; resumed, the run ends with the uninterrupted run's parameters and records (the
    memory bank is in the checkpoint)."""
    def launch(workdir, fault=None):
        env = dict(os.environ, **({"DCJAX_FAULT": fault} if fault else {}))
        return subprocess.run([sys.executable, __file__, str(workdir)], cwd=ROOT,
                              capture_output=True, text=True, env=env, timeout=900)

    clean = launch(tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr[-3000:]
    faulty = tmp_path / "faulty"
    kills = 0
    for fault in ("extract_batch:20:0:KILL", "train_batch:30:0:KILL", "kmeans_iteration:1:0:KILL",
                  "checkpoint_save:2:0.02:KILL", "train_batch:20:0:KILL"):
        proc = launch(faulty, fault)
        assert proc.returncode in (-signal.SIGKILL, 0), (fault, proc.stderr[-3000:])
        kills += proc.returncode == -signal.SIGKILL
    assert kills >= 4
    proc = launch(faulty)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from test_runner import params_and_records

    step_a, params_a, records_a = params_and_records(tmp_path / "clean")
    step_b, params_b, records_b = params_and_records(faulty)
    assert step_a == step_b == 2 * 44 and records_a == records_b
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), params_a, params_b)


if __name__ == "__main__":
    os.environ.setdefault("DCJAX_DATA_DIR", str(Path(sys.argv[1]).parent / "tfds"))
    from dcjax.data.importer import ensure_embedded

    ensure_embedded("digits", os.environ["DCJAX_DATA_DIR"])
    runner.train_and_evaluate(v2_config(2, checkpoint_every_steps=7), sys.argv[1])
