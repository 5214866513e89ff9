"""The view cache: extraction from the decoded view kept on the devices, in host memory or on disk
gives the decoding pass's features bit for bit, survives a restart (disk), and is rebuilt whenever
the data, the view or the process layout changes."""

import functools
import json

import jax
import numpy as np
import pytest
from conftest import make_config

from dcjax import view_cache
from dcjax.data import pipeline
from dcjax.data.datasets import open_split
from dcjax.data.importer import ensure_embedded
from dcjax.features import extract
from dcjax.models import from_config
from dcjax.sharding import default_mesh
from dcjax.step import create_train_state, make_feature_fn
from dcjax.view_cache import ViewCache, files_fingerprint


@functools.lru_cache(maxsize=1)
def setting():
    c = make_config()
    ensure_embedded("digits")
    source, info = open_split("digits", "train")
    model = from_config(c, 10)
    state = create_train_state(model, c, jax.random.key(0))
    fn = jax.jit(make_feature_fn(model))
    dataset = {"name": "digits", "split": "train", "files": files_fingerprint(info.split_files["train"])}
    return c, source, fn, (state.params, state.batch_stats), dataset


def run_extract(cache=None, view=None, on_batch=None):
    c, source, fn, variables, _ = setting()
    return extract(fn, variables, source, view or pipeline.view_config(c), c.batch_size,
                   None, default_mesh(), pipeline.loader_options(c), cache=cache,
                   on_batch=on_batch)


def host(f):
    return np.asarray(jax.device_get(f.rows)), f.labels, f.image


@pytest.fixture(scope="module")
def decoded():
    return host(run_extract())


def no_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decoded although the view was cached")

    monkeypatch.setattr(pipeline, "ordered_batches", fail)


@pytest.mark.parametrize("mode", ["device", "host", "disk", "auto"])
def test_cached_features_equal_decoded_bit_for_bit(mode, decoded, tmp_path, monkeypatch):
    dataset = setting()[4]
    cache = ViewCache(mode, directory=tmp_path, dataset=dataset)
    first = host(run_extract(cache))  # decodes and fills the cache
    lines = cache.take_log()
    assert len(lines) == 1 and lines[0].startswith(f"view cache: {'device' if mode == 'auto' else mode}")
    with monkeypatch.context() as m:
        no_decoding(m)
        second = host(run_extract(cache))  # reads the cache
    for got in (first, second):
        for a, b in zip(got, decoded):
            np.testing.assert_array_equal(a, b)
    assert (tmp_path / "process_0" / "key.json").exists() == (mode == "disk")


def real_key(cache, view=None, batch=None, mesh=None):
    c, source, *_ = setting()
    batch = batch or c.batch_size
    return cache.key(view or pipeline.view_config(c), batch, -(-len(source) // batch), batch,
                     mesh or default_mesh())


def test_disk_cache_survives_a_restart_and_is_rebuilt_when_anything_changes(decoded, tmp_path,
                                                                             monkeypatch):
    c, *_, dataset = setting()
    run_extract(ViewCache("disk", directory=tmp_path, dataset=dataset))
    with monkeypatch.context() as m:  # a new process: the same key finds the files
        no_decoding(m)
        restarted = ViewCache("auto", directory=tmp_path, dataset=dataset)
        got = host(run_extract(restarted))
        assert restarted.take_log()[0].startswith("view cache: reading")
    for a, b in zip(got, decoded):
        np.testing.assert_array_equal(a, b)

    same = ViewCache("disk", directory=tmp_path, dataset=dataset)
    assert same.lookup(real_key(same)) is not None
    other_data = ViewCache("disk", directory=tmp_path, dataset={**dataset, "files": []})
    changed = {
        "view": real_key(same, view=pipeline.ViewConfig(image_size=28, resize_size=32)),
        "batch": real_key(same, batch=c.batch_size // 2),
        "devices": real_key(same, mesh=jax.sharding.Mesh(np.asarray(jax.devices()[:2]),
                                                         ("data",))),
        "dataset": real_key(other_data),
    }
    for what, key in changed.items():
        assert key != real_key(same), what
        assert ViewCache("disk", directory=tmp_path, dataset=dataset).lookup(key) is None, what


def test_a_rewritten_file_changes_the_fingerprint(tmp_path):
    import os

    f = tmp_path / "part-00000.array_record"
    f.write_bytes(b"x" * 100)
    before = files_fingerprint([f])
    f.write_bytes(b"y" * 100)  # same size
    os.utime(f, ns=(before[0][2] + 10**9, before[0][2] + 10**9))
    assert files_fingerprint([f]) != before and files_fingerprint([f])[0][1] == 100


def test_an_interrupted_build_is_never_used(decoded, tmp_path):
    dataset = setting()[4]

    def stop_at_3(done, total):
        if done == 3:
            raise KeyboardInterrupt

    cache = ViewCache("disk", directory=tmp_path, dataset=dataset)
    with pytest.raises(KeyboardInterrupt):
        run_extract(cache, on_batch=stop_at_3)
    assert not (tmp_path / "process_0" / "key.json").exists()
    for fresh in (cache, ViewCache("auto", directory=tmp_path, dataset=dataset)):
        assert fresh.lookup(real_key(fresh)) is None
    memory = ViewCache("device", dataset=dataset)
    with pytest.raises(KeyboardInterrupt):
        run_extract(memory, on_batch=stop_at_3)
    assert memory.lookup(real_key(memory)) is None
    got = host(run_extract(memory))  # decodes again, completely
    for a, b in zip(got, decoded):
        np.testing.assert_array_equal(a, b)
    assert memory.lookup(real_key(memory)) is not None


def test_auto_placement(tmp_path, monkeypatch):
    mesh = default_mesh()
    cache = ViewCache("auto", directory=tmp_path)
    assert cache._place(10 << 20, mesh)[0] == "device"  # CPU devices: a share of host memory
    monkeypatch.setattr(view_cache, "available_memory", lambda: 1 << 20)
    assert cache._place(10 << 20, mesh) == (
        "disk", "too large for the share of device and host memory it may take")
    assert ViewCache("auto")._place(10 << 20, mesh)[0] == "off"
    assert ViewCache("host")._place(10 << 40, mesh)[0] == "host"  # asked for by name
    with pytest.raises(ValueError, match="view cache 'ram' must be one of"):
        ViewCache("ram")


@pytest.mark.slow
def test_training_with_and_without_the_cache_is_identical(tmp_path, capsys):
    from dcjax.train import train_and_evaluate

    runs, outs, summaries = {}, {}, {}
    for mode in ("off", "auto", "disk"):
        # The trainer's defaults for k-means and decoding too (configs/digits.py pins others); the
        # kNN evaluator after every epoch, so that the held-out split's cache is read back.
        c = make_config(**{"num_epochs": 2, "data.view_cache": mode, "clustering.backend": "auto",
                           "data.decoder": "fast", "eval_every_epochs": 1})
        train_and_evaluate(c, str(tmp_path / mode))
        runs[mode] = records(tmp_path / mode)
        outs[mode] = capsys.readouterr().out
        summaries[mode] = json.loads((tmp_path / mode / "summary.json").read_text())
    assert "view cache: device (CPU devices" in outs["auto"]
    assert "view cache (held-out split): device (CPU devices" in outs["auto"]
    assert "k-means: faiss (CPU devices only and faiss is installed" in outs["auto"]
    # Each split is decoded once: the kNN bank reads the training loop's cache (no second build of
    # the training split), the queries and the final comparison the held-out split's.
    assert outs["disk"].count("view cache: disk (config") == 1
    assert outs["disk"].count("view cache (held-out split): disk (config") == 1
    assert "view cache" not in outs["off"]
    assert (tmp_path / "disk" / "view_cache" / "process_0" / "key.json").exists()
    assert (tmp_path / "disk" / "view_cache" / "eval" / "process_0" / "key.json").exists()
    assert all(r["knn_top1"] > 0.5 for r in runs["off"])
    for mode in ("auto", "disk"):
        assert without_times(runs[mode]) == without_times(runs["off"]), mode
        for key in ("final_nmi_labels", "random_init_nmi_labels"):
            assert summaries[mode][key] == summaries["off"][key], (mode, key)

    # Run on for one more epoch: the new process reads both disk caches instead of decoding.
    train_and_evaluate(make_config(**{"num_epochs": 3, "data.view_cache": "disk",
                                      "clustering.backend": "auto", "data.decoder": "fast",
                                      "eval_every_epochs": 1}),
                       str(tmp_path / "disk"))
    out = capsys.readouterr().out
    assert "view cache: reading" in out and "view cache: disk" not in out
    assert "view cache (held-out split): reading" in out
    assert "view cache (held-out split): disk" not in out
    assert [r["epoch"] for r in records(tmp_path / "disk")] == [0, 1, 2]


def records(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def without_times(rows):
    return [{k: v for k, v in r.items() if "time" not in k and "per_sec" not in k} for r in rows]
