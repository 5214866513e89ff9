"""The DALI training view (config.data.loader='dali'), run with DALI's CPU operators: the same rows,
crop boxes and flips as the grain loader, pixels within resampling, exact resume, and a training
run. Where DALI decodes on a GPU (device='mixed', nvJPEG) is not run here: no GPU."""

import functools

import numpy as np
import pytest
from conftest import make_config, shared_file

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (requirements-dali.txt)")

from dcjax.data import dali_loader, pipeline  # noqa: E402
from dcjax.sharding import default_mesh  # noqa: E402


class Records:
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return {"image": self.data[i], "label": 0}


@functools.lru_cache(maxsize=1)
def photos():
    from dcjax.bench.pipeline import _tar_images, imagenet_like

    tiles = _tar_images(shared_file("imagenette-128.tar.gz"), "/train/", 4 * 48)
    return Records(imagenet_like(tiles, 48))


VIEW = pipeline.ViewConfig(image_size=96, resize_size=110)


def both(indices, batch, **kw):
    dali = list(dali_loader.train_batches(photos(), indices, VIEW, batch, seed=11,
                                          mesh=default_mesh(), **kw))
    grain = list(pipeline.train_batches(photos(), indices, VIEW, batch, seed=11, **kw))
    return dali, grain


def test_same_rows_boxes_and_flips_as_grain():
    indices = np.random.default_rng(0).permutation(48)[:40]  # 2 full batches of 16, 8 dropped
    dali, grain = both(indices, 16)
    assert len(dali) == len(grain) == 2
    for d, g in zip(dali, grain):
        np.testing.assert_array_equal(d["index"], g["index"])
        assert d["image"].shape == g["image"].shape == (16, 96, 96, 3)
        assert d["image"].dtype == np.uint8
        diff = np.abs(d["image"].astype(np.int16) - g["image"].astype(np.int16))
        per_image = diff.reshape(16, -1).mean(1)
        # Same box and flip, another resampling filter: far below what any other crop or the
        # mirror image gives.
        assert per_image.max() < 3.0, per_image
        mirrored = np.abs(d["image"][:, :, ::-1].astype(np.int16) - g["image"]).reshape(16, -1)
        assert (mirrored.mean(1) > 4 * per_image).all()


def test_resume_mid_epoch_and_process_rows():
    indices = np.random.default_rng(1).permutation(48)
    full = list(dali_loader.train_batches(photos(), indices, VIEW, 16, seed=5, mesh=default_mesh()))
    resumed = list(dali_loader.train_batches(photos(), indices, VIEW, 16, seed=5,
                                             mesh=default_mesh(), start_batch=2))
    assert len(resumed) == 1
    np.testing.assert_array_equal(resumed[0]["image"], full[2]["image"])
    # Process 1 of 2 reads its rows of every global batch, as grain does.
    dali = list(dali_loader.train_batches(photos(), indices, VIEW, 16, seed=5, mesh=default_mesh(),
                                          process_index=1, process_count=2))
    grain = list(pipeline.train_batches(photos(), indices, VIEW, 16, seed=5, process_index=1,
                                        process_count=2))
    for d, g in zip(dali, grain):
        np.testing.assert_array_equal(d["index"], g["index"])
        assert d["image"].shape == (8, 96, 96, 3)


def test_arrays_and_other_crops_are_refused():
    arrays = Records([np.zeros((8, 8, 3), np.uint8)] * 4)
    with pytest.raises(ValueError, match="reads encoded images"):
        list(dali_loader.train_batches(arrays, np.arange(4), VIEW, 4, seed=0, mesh=default_mesh()))
    translate = pipeline.ViewConfig(image_size=8, resize_size=8, crop="translate")
    with pytest.raises(ValueError, match="implements the 'resized' crop"):
        next(dali_loader.train_batches(photos(), np.arange(4), translate, 4, seed=0,
                                       mesh=default_mesh()))


def test_config_refuses_dali_where_it_is_not_installed(monkeypatch):
    from dcjax import config_lib, validation
    from dcjax.data import checks

    c = make_config(**{"data.loader": "dali"})
    validation.validate(c, num_devices=4)
    monkeypatch.setattr(checks, "dali_available", lambda: False)
    with pytest.raises(config_lib.ConfigError, match="config.data.loader='dali' needs NVIDIA DALI"):
        validation.validate(c, num_devices=4)


def test_training_with_dali(tmp_path, capsys):
    import json

    from dcjax.train import train_and_evaluate

    train_and_evaluate(make_config(**{"data.loader": "dali"}), str(tmp_path))
    assert (tmp_path / "export" / "assignments.csv").exists()
    assert "epoch 0: loss" in capsys.readouterr().out
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["loss"]) and record["train_images_per_sec"] > 0
