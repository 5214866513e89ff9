"""Importing image folders, tarballs, IDX files and digits; the ordered and training views."""

import gzip
import struct
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from conftest import ROOT, shared_file
from PIL import Image

from dcjax.data import pipeline
from dcjax.data.datasets import DataError, open_split
from dcjax.data.importer import prepare
from dcjax.data.sources import read_idx

VIEW = pipeline.ViewConfig(image_size=16, resize_size=16)


def write_folder(root, corrupt=True):
    """train/{cat,dog}/ with 7 + 5 images, test/{cat,dog}/ with 2 + 3; one corrupt JPEG in train."""
    rng = np.random.default_rng(0)
    counts = {("train", "cat"): 7, ("train", "dog"): 5, ("test", "cat"): 2, ("test", "dog"): 3}
    for (split, label), n in counts.items():
        d = root / "pets" / split / label
        d.mkdir(parents=True)
        for i in range(n):
            size = (int(rng.integers(12, 40)), int(rng.integers(12, 40)))
            img = Image.fromarray(rng.integers(0, 255, size + (3,), dtype=np.uint8))
            img.save(d / f"{i}.{'png' if i % 2 else 'jpg'}")
    if corrupt:
        (root / "pets" / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return counts


def test_image_folder_import_reports_and_skips_the_corrupt_file(tmp_path, capsys):
    counts = write_folder(tmp_path)
    report = prepare(str(tmp_path / "pets"), "pets", str(tmp_path / "tfds"))
    assert report.counts == {"train": {"cat": 7, "dog": 5}, "test": {"cat": 2, "dog": 3}}
    assert [p for p, _ in report.skipped] == ["train/cat/broken.jpg"]
    out = capsys.readouterr().out
    assert "train: 12 images in 2 classes" in out and "broken.jpg" in out
    source, info = open_split("pets", "train", str(tmp_path / "tfds"))
    assert info.class_names == ("cat", "dog") and len(source) == 12
    ids = sorted(source[i]["id"].decode() for i in range(len(source)))
    assert ids == sorted(f"train/{c}/{i}.{'png' if i % 2 else 'jpg'}"
                         for (s, c), n in counts.items() if s == "train" for i in range(n))
    # Stored bytes decode to the original pixels (PNG) and labels follow the class folders.
    for i in range(len(source)):
        rec = source[i]
        name = rec["id"].decode()
        assert info.class_names[rec["label"]] == name.split("/")[1]
        if name.endswith(".png"):
            original = np.asarray(Image.open(tmp_path / "pets" / name).convert("RGB"))
            np.testing.assert_array_equal(pipeline.decode_image(rec["image"]), original)


def test_tarball_import_matches_folder_import(tmp_path):
    write_folder(tmp_path, corrupt=True)
    with tarfile.open(tmp_path / "pets.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "pets", arcname="pets")
    report = prepare(str(tmp_path / "pets.tar.gz"), "pets_tar", str(tmp_path / "tfds"))
    assert report.total("train") == 12 and report.total("test") == 5
    assert [p for p, _ in report.skipped] == ["pets/train/cat/broken.jpg"]


def test_existing_dataset_is_not_overwritten_silently(tmp_path):
    write_folder(tmp_path, corrupt=False)
    prepare(str(tmp_path / "pets"), "pets", str(tmp_path / "tfds"), verbose=False)
    with pytest.raises(DataError, match="already exists"):
        prepare(str(tmp_path / "pets"), "pets", str(tmp_path / "tfds"), verbose=False)
    prepare(str(tmp_path / "pets"), "pets", str(tmp_path / "tfds"), overwrite=True, verbose=False)


def test_overwrite_names_the_runs_and_a_failed_import_keeps_the_old_dataset(tmp_path, capsys):
    import json

    from dcjax.data.datasets import dataset_dir, record_run

    write_folder(tmp_path, corrupt=False)
    tfds_dir = str(tmp_path / "tfds")
    prepare(str(tmp_path / "pets"), "pets", tfds_dir, verbose=False)
    before = len(open_split("pets", "train", tfds_dir)[0])
    run = tmp_path / "runs" / "pets"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data": {"name": "pets"}}))
    record_run("pets", tfds_dir, run)
    record_run("pets", tfds_dir, run)  # recorded once
    record_run("pets", tfds_dir, tmp_path / "gone")  # not a run: not named
    with pytest.raises(DataError, match="no such file or folder"):
        prepare(str(tmp_path / "nothing"), "pets", tfds_dir, overwrite=True)
    assert len(open_split("pets", "train", tfds_dir)[0]) == before  # the old dataset is back
    assert sorted(p.name for p in dataset_dir("pets", tfds_dir).parent.iterdir()) == \
        ["1.0.0", "runs.json"]
    capsys.readouterr()
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(tmp_path / "pets" / "train" / "cat"
                                                              / "extra.png")
    prepare(str(tmp_path / "pets"), "pets", tfds_dir, overwrite=True)
    out = capsys.readouterr().out
    assert f"replacing dataset 'pets', which 1 run(s) trained on: {run}." in out
    assert "python -m dcjax.predict" in out and str(tmp_path / "gone") not in out
    assert len(open_split("pets", "train", tfds_dir)[0]) == before + 1


def write_idx(path, array):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I",
                                                                          *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def test_idx_import(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 255, (30, 28, 28), dtype=np.uint8)
    y_train = (np.arange(30) % 3).astype(np.uint8)
    x_test = rng.integers(0, 255, (6, 28, 28), dtype=np.uint8)
    y_test = (np.arange(6) % 3).astype(np.uint8)
    d = tmp_path / "idx"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte.gz", x_train)
    write_idx(d / "train-labels-idx1-ubyte.gz", y_train)
    write_idx(d / "t10k-images-idx3-ubyte.gz", x_test)
    write_idx(d / "t10k-labels-idx1-ubyte.gz", y_test)
    np.testing.assert_array_equal(read_idx(d / "train-images-idx3-ubyte.gz"), x_train)
    report = prepare(str(d), "idx_toy", str(tmp_path / "tfds"), class_names=["a", "b", "c"],
                     verbose=False)
    assert report.counts["train"] == {"a": 10, "b": 10, "c": 10}
    source, info = open_split("idx_toy", "test", str(tmp_path / "tfds"))
    assert info.class_names == ("a", "b", "c")
    for i in range(len(source)):
        rec = source[i]
        j = int(rec["id"].decode().split("/")[1])
        assert rec["label"] == y_test[j]
        np.testing.assert_array_equal(pipeline.decode_image(rec["image"])[..., 0], x_test[j])


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    d = tmp_path / "idx"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte.gz", np.zeros((4, 5, 5), np.uint8))
    data = gzip.open(d / "train-images-idx3-ubyte.gz").read()[:-7]
    with gzip.open(d / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(data)
    write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="header says"):
        prepare(str(d), "bad_idx", str(tmp_path / "tfds"), verbose=False)


def test_digits_are_prepared_on_first_use(tmp_path):
    from dcjax.data.importer import ensure_embedded

    with pytest.raises(DataError, match="--source=digits"):
        open_split("digits", "train", str(tmp_path))
    ensure_embedded("digits", str(tmp_path))
    ensure_embedded("digits", str(tmp_path))  # once only
    source, info = open_split("digits", "train", str(tmp_path))
    test_source, _ = open_split("digits", "test", str(tmp_path))
    assert len(source) + len(test_source) == 1797
    assert info.num_classes == 10
    image = pipeline.decode_image(source[0]["image"])
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8


def test_missing_dataset_and_split_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_split("no_such_dataset", "train", str(tmp_path))
    with pytest.raises(DataError, match="has no split 'validation'"):
        open_split("digits", "validation")


def test_damaged_dataset_is_reported(tmp_path):
    write_folder(tmp_path, corrupt=False)
    report = prepare(str(tmp_path / "pets"), "pets", str(tmp_path / "tfds"), verbose=False)
    for f in (tmp_path / "tfds" / "pets" / "1.0.0").glob("*train.array_record*"):
        f.unlink()
    with pytest.raises(DataError):
        source, _ = open_split("pets", "train", str(tmp_path / "tfds"))
        source[0]
    assert report.total("train") == 12


@pytest.mark.parametrize("processes", [1, 2])
def test_ordered_view_covers_every_image_exactly_once(processes):
    source, _ = open_split("digits", "test")
    n, batch = len(source), 64
    seen, labels = [], []
    for p in range(processes):
        for b in pipeline.ordered_batches(source, VIEW, batch, process_index=p,
                                          process_count=processes):
            assert b["image"].shape == (batch // processes, 16, 16, 3)
            assert b["image"].dtype == np.uint8
            seen.append(b["index"][b["mask"]])
            labels.append(b["label"][b["mask"]])
            assert np.all(b["index"][~b["mask"]] == -1)
    seen = np.concatenate(seen)
    assert len(seen) == n and sorted(seen) == list(range(n))
    truth = np.array([source[i]["label"] for i in range(n)])
    np.testing.assert_array_equal(np.concatenate(labels), truth[seen])
    if processes == 1:
        np.testing.assert_array_equal(seen, np.arange(n))


def test_ordered_view_is_deterministic_center_crop():
    source, _ = open_split("digits", "test")
    a = next(pipeline.ordered_batches(source, VIEW, 8))
    b = next(pipeline.ordered_batches(source, VIEW, 8))
    np.testing.assert_array_equal(a["image"], b["image"])
    up = np.asarray(Image.fromarray(pipeline.decode_image(source[0]["image"])).resize(
        (16, 16), Image.BILINEAR))
    np.testing.assert_array_equal(a["image"][0], up)


def test_training_view_returns_the_requested_indices_augmented():
    source, _ = open_split("digits", "train")
    rng = np.random.default_rng(0)
    indices = rng.choice(len(source), size=100, replace=True)
    batches = list(pipeline.train_batches(source, indices, VIEW, 32, seed=3))
    assert len(batches) == 3  # full batches only
    got = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(got, indices[:96])
    truth = np.array([source[int(i)]["label"] for i in indices[:96]])
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), truth)
    centre = next(pipeline.ordered_batches(source, VIEW, 1))["image"]
    # Augmented: the same image at different positions gets different crops.
    dup = pipeline.train_batches(source, np.zeros(32, np.int64), VIEW, 32, seed=0)
    views = next(dup)["image"]
    assert len({v.tobytes() for v in views}) > 16
    assert any(not np.array_equal(v, centre[0]) for v in views)


def test_training_view_is_reproducible_and_resumable():
    source, _ = open_split("digits", "train")
    indices = np.random.default_rng(1).permutation(len(source))[:128]
    full = list(pipeline.train_batches(source, indices, VIEW, 32, seed=7))
    resumed = list(pipeline.train_batches(source, indices, VIEW, 32, seed=7, start_batch=2))
    assert len(resumed) == 2
    for a, b in zip(full[2:], resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
    other = next(pipeline.train_batches(source, indices, VIEW, 32, seed=8))
    assert not np.array_equal(other["image"], full[0]["image"])
    # Two processes' rows, stacked in process order, are the one-process global batch.
    halves = [next(pipeline.train_batches(source, indices, VIEW, 32, seed=7, process_index=p,
                                          process_count=2)) for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), full[0]["image"])


@pytest.mark.parametrize("decoder", ["pil", "fast"])
def test_multi_crop_views_are_configuration(decoder):
    """config.data.views gives a tuple of views per record, each of its own size and crop range;
    the first is the single-view run's view, the others their own draws, and a resumed epoch sees
    the same views."""
    from conftest import make_config

    c = make_config(**{"data.views": ((2, 32, (0.3, 1.0)), (3, 16, (0.05, 0.3)))})
    views = pipeline.view_configs(c)
    assert [(v.image_size, v.crop_scale) for v in views] == \
        [(32, (0.3, 1.0))] * 2 + [(16, (0.05, 0.3))] * 3
    source, _ = open_split("digits", "train")
    indices = np.random.default_rng(2).permutation(len(source))[:96]
    full = list(pipeline.train_batches(source, indices, views, 32, seed=5, decoder=decoder))
    assert len(full) == 3 and all(len(b["image"]) == 5 for b in full)
    assert [v.shape for v in full[0]["image"]] == [(32, 32, 32, 3)] * 2 + [(32, 16, 16, 3)] * 3
    single = next(pipeline.train_batches(source, indices, pipeline.view_config(c), 32, seed=5,
                                         decoder=decoder))
    np.testing.assert_array_equal(full[0]["image"][0], single["image"])  # view 0 = the one view
    assert not np.array_equal(full[0]["image"][0], full[0]["image"][1])  # its own draw
    resumed = next(pipeline.train_batches(source, indices, views, 32, seed=5, start_batch=2,
                                          decoder=decoder))
    for a, b in zip(full[2]["image"], resumed["image"]):
        np.testing.assert_array_equal(a, b)


def test_views_are_checked_and_deepcluster_takes_one():
    from conftest import make_config

    from dcjax import runner
    from dcjax.config_lib import ConfigError, flat_fields
    from dcjax.validation import validate

    for bad in (((2, 224),), ((0, 96, (0.05, 0.14)),), ((2, 96, (0.5, 0.1)),)):
        with pytest.raises(ConfigError, match=r"config.data.views: .* must be \(count >= 1"):
            validate(make_config(**{"data.views": bad}), num_devices=4)
    c = make_config(**{"data.views": ((2, 32, (0.3, 1.0)), (2, 28, (0.05, 0.3)))})
    validate(c, num_devices=4)
    import json

    assert flat_fields(json.loads(c.to_json())) == flat_fields(c)  # resumes compare equal
    with pytest.raises(ConfigError, match="DeepCluster trains on one view per image"):
        runner.setup(c, "/nonexistent/run")


def test_every_decoder_and_dali_take_box_and_flip_from_draw_view(photo_jpegs):
    """The DALI loader's crop plan is draw_view's box and flip for the same (seed, position)."""
    from dcjax.data import dali_loader

    view = pipeline.ViewConfig(image_size=64, resize_size=64)
    for position, data in enumerate(photo_jpegs[:8]):
        _, anchor, shape, flip = dali_loader.crop_plan(data, view, 11, position)
        h, w = dali_loader.image_size_of(data)
        d = pipeline.draw_view(h, w, view, np.random.default_rng(pipeline.view_seed(11, position, 0)))
        assert (tuple(anchor), tuple(shape), bool(flip)) == ((d.left, d.top), (d.width, d.height),
                                                             d.flip)


def test_random_resized_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(500):
        top, left, h, w = pipeline.random_resized_crop_box(100, 80, rng, (0.08, 1.0),
                                                           (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 80
        assert 0.07 * 8000 <= h * w <= 8000


def _shifted_windows(image, side, margin):
    """Every window of `image` padded by `margin` zeros whose offset from the centre is in
    [-margin, margin]^2 (the translate view without flip), keyed by that offset."""
    padded = np.pad(image, ((margin, margin), (margin, margin), (0, 0)))
    top, left = (image.shape[0] - side) // 2 + margin, (image.shape[1] - side) // 2 + margin
    return {(dy, dx): padded[top + dy: top + dy + side, left + dx: left + dx + side]
            for dy in range(-margin, margin + 1) for dx in range(-margin, margin + 1)}


@pytest.mark.parametrize("source_side,resize,side,margin", [(256, 256, 224, 16), (32, 32, 32, 2),
                                                            (64, 64, 64, 5)])
def test_translate_view_is_the_centre_window_shifted_by_whole_pixels(source_side, resize, side,
                                                                     margin):
    # The reference probe's views: RandomCrop(224) of a 256 px square is the centre 224 window
    # shifted by -16..16 px; where the deterministic view has no margin (32 px), zero padding.
    rng = np.random.default_rng(0)
    image = rng.integers(1, 255, (source_side, source_side, 3), dtype=np.uint8)
    view = pipeline.ViewConfig(image_size=side, resize_size=resize, crop="translate", flip=False)
    windows = _shifted_windows(image, side, margin)
    seen = set()
    for seed in range(300):
        out = pipeline.train_view(image, view, np.random.default_rng(seed))
        assert out.shape == (side, side, 3)
        match = [k for k, w in windows.items() if np.array_equal(out, w)]
        assert len(match) == 1, f"seed {seed}: not a whole-pixel shift of the centre window"
        seen.add(match[0])
    full = set(range(-margin, margin + 1))
    assert {dy for dy, _ in seen} == full and {dx for _, dx in seen} == full


def test_translate_view_flips_and_bad_crop_is_refused():
    image = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    view = pipeline.ViewConfig(image_size=32, resize_size=32, crop="translate")
    windows = _shifted_windows(image, 32, 2)
    flipped = 0
    for seed in range(50):
        out = pipeline.train_view(image, view, np.random.default_rng(seed))
        if not any(np.array_equal(out, w) for w in windows.values()):
            flipped += 1
            assert any(np.array_equal(out[:, ::-1], w) for w in windows.values())
    assert 10 <= flipped <= 40
    with pytest.raises(ValueError, match="crop"):
        pipeline.train_view(image, pipeline.ViewConfig(32, 32, crop="tencrop"),
                            np.random.default_rng(0))


def test_ten_crop_views_are_the_corners_and_centre_of_the_resized_image_and_mirrors():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)  # landscape; shorter side 40
    view = pipeline.ViewConfig(image_size=24, resize_size=40)  # no resize: whole-pixel windows
    crops = pipeline.ten_crop_views(image, view)
    assert crops.shape == (10, 24, 24, 3) and crops.dtype == np.uint8
    expected = [image[:24, :24], image[:24, 32:], image[16:, :24], image[16:, 32:],
                image[8:32, 16:40]]
    for got, want in zip(crops[:5], expected):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(crops[5:], crops[:5, :, ::-1])
    # With a resize, the fifth is the deterministic view itself.
    view = pipeline.ViewConfig(image_size=16, resize_size=18)
    crops = pipeline.ten_crop_views(image, view)
    np.testing.assert_array_equal(crops[4], pipeline.center_view(image, view))
    source, _ = open_split("digits", "test")
    batch = next(pipeline.ordered_batches(source, view, 8, ten_crop=True))
    assert batch["image"].shape == (8, 10, 16, 16, 3) and batch["mask"].all()
    np.testing.assert_array_equal(batch["image"][:, 4],
                                  next(pipeline.ordered_batches(source, view, 8))["image"])


def test_prepare_cli_reports_bad_source(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dcjax.data.prepare",
                             f"--source={tmp_path}/nothing", "--name=x",
                             f"--data_dir={tmp_path}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --source=")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_shared_cifar10_tarball_imports_completely(tmp_path):
    path = shared_file("cifar10-jpg.tar.gz")
    report = prepare(str(path), "cifar10_jpg", str(tmp_path), verbose=False)
    assert report.total("train") == 50000 and report.total("test") == 10000
    assert all(n == 5000 for n in report.counts["train"].values())
    assert [p for p, _ in report.skipped if p.lower().endswith((".jpg", ".png"))] == []
    source, info = open_split("cifar10_jpg", "test", str(tmp_path))
    assert info.class_names[0] == "airplane" and len(source) == 10000
    img = pipeline.decode_image(source[0]["image"])
    assert img.shape == (32, 32, 3)


def _jpeg(rng, h, w) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _add(tar, name: str, data: bytes) -> None:
    import io
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_imagenet_tarballs_with_resized_copy(tmp_path):
    """The official layout in miniature: a train tar of per-class tars, a flat val tar, labels."""
    import io
    import tarfile

    from dcjax.data.datasets import open_split
    from dcjax.data.importer import prepare
    from dcjax.data.pipeline import decode_image

    rng = np.random.default_rng(0)
    wnids = ["n01440764", "n02102040"]
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar", "w") as outer:
        for c, wnid in enumerate(wnids):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for i in range(3 + c):
                    _add(inner, f"{wnid}_{i}.JPEG", _jpeg(rng, 300, 400))
            _add(outer, f"{wnid}.tar", buf.getvalue())
    val = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3)]
    with tarfile.open(tmp_path / "ILSVRC2012_img_val.tar", "w") as tar:
        for name in val:
            _add(tar, name, _jpeg(rng, 200, 120))
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n" + "".join(
            f"{n[:-5]},{wnids[i % 2]} 1 2 3 4\n" for i, n in enumerate(val)))
    report = prepare(str(tmp_path), "mini_imagenet", resize_shorter=64, verbose=False)
    assert report.class_names == wnids and report.total("train") == 7
    train, info = open_split("mini_imagenet", "train")
    assert info.split_sizes == {"train": 7, "validation": 3}
    shapes = {decode_image(train[i]["image"]).shape for i in range(len(train))}
    assert shapes == {(64, 85, 3)}  # shorter side 300 -> 64, 400 -> 85
    valid, _ = open_split("mini_imagenet", "validation")
    assert [int(valid[i]["label"]) for i in range(3)] == [0, 1, 0]
    assert decode_image(valid[0]["image"]).shape == (107, 64, 3)  # 200x120 -> 106.7x64


# --------------------------------------------------------------------------- the fast training view


def reference_random_resized_crop(h, w, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """RandomResizedCrop's box as its definition reads (ten tries, then the centre crop with
    the aspect clamped), written independently here: (top, left, height, width)."""
    import math

    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.integers(0, h - ch, endpoint=True), rng.integers(0, w - cw, endpoint=True), ch, cw
    if w / h < ratio[0]:
        return (h - round(w / ratio[0])) // 2, 0, round(w / ratio[0]), w
    if w / h > ratio[1]:
        return 0, (w - round(h * ratio[1])) // 2, h, round(h * ratio[1])
    return 0, 0, h, w


def test_crop_boxes_follow_random_resized_crop():
    # The fast view draws its boxes with pipeline.random_resized_crop_box (the next test checks it
    # uses the same ones as the full decode); their distribution against an independent
    # implementation, for a 500 x 375 image: area share, log aspect, centre position.
    h, w, n = 375, 500, 20000
    ours, ref = np.random.default_rng(1), np.random.default_rng(2)
    a = np.array([pipeline.random_resized_crop_box(h, w, ours, (0.08, 1.0), (3 / 4, 4 / 3))
                  for _ in range(n)], float)
    b = np.array([reference_random_resized_crop(h, w, ref) for _ in range(n)], float)

    def stats(boxes):
        top, left, ch, cw = boxes.T
        return {"area": ch * cw / (h * w), "log_aspect": np.log(cw / ch),
                "cy": (top + ch / 2) / h, "cx": (left + cw / 2) / w}

    sa, sb = stats(a), stats(b)
    for key in sa:
        qa, qb = np.quantile(sa[key], np.linspace(0.05, 0.95, 19)), np.quantile(
            sb[key], np.linspace(0.05, 0.95, 19))
        spread = np.quantile(sb[key], 0.95) - np.quantile(sb[key], 0.05)
        assert np.abs(qa - qb).max() < 0.03 * spread, key
    # Sides are rounded to whole pixels, so the area share may fall a little under 0.08.
    assert 0.077 <= sa["area"].min() and sa["area"].max() <= 1.0
    assert min(sa["area"].min(), sb["area"].min()) < 0.085 and sa["area"].max() > 0.95


@pytest.fixture(scope="module")
def photo_jpegs():
    """ImageNet-sized JPEGs (500 x 375, quality 90) made from the shared Imagenette images, the
    way the pipeline benchmark makes them."""
    from dcjax.bench.pipeline import _tar_images, imagenet_like

    tiles = _tar_images(shared_file("imagenette-128.tar.gz"), "/train/", 4 * 24)
    return imagenet_like(tiles, 24)


@pytest.mark.parametrize("size", [224, 112, 64])
def test_fast_view_matches_the_full_decode(photo_jpegs, size):
    view = pipeline.ViewConfig(image_size=size, resize_size=size)
    same = differ = 0
    for i, data in enumerate(photo_jpegs):
        for r in range(6):
            want = pipeline.train_view(pipeline.decode_image(data), view,
                                       np.random.default_rng([i, r]))
            got = pipeline.fast_train_view(data, view, np.random.default_rng([i, r]))
            assert got.shape == want.shape == (size, size, 3) and got.dtype == np.uint8
            if np.array_equal(got, want):
                same += 1
                continue
            differ += 1
            diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
            # Decoded at 1/2 .. 1/8 scale: the same crop and flip, resampled differently.
            assert diff.mean() < 3.0 and np.percentile(diff, 99) < 24, (i, r, diff.mean())
            flipped = np.abs(got[:, ::-1].astype(np.int16) - want.astype(np.int16)).mean()
            assert diff.mean() < flipped
    if size == 224:  # every crop of a 500 x 375 image is under 448 px: no DCT scaling, same pixels
        assert differ == 0
    else:
        assert differ > 0 and same > 0


@pytest.mark.parametrize("size", [224, 64])
def test_opencv_view_matches_the_pillow_view(photo_jpegs, size):
    """decoder='opencv': the same crops and flips as the Pillow views, resampled by OpenCV."""
    view = pipeline.ViewConfig(image_size=size, resize_size=size)
    means = []
    for i, data in enumerate(photo_jpegs):
        for r in range(6):
            want = pipeline.fast_train_view(data, view, np.random.default_rng([i, r]))
            got = pipeline.fast_train_view(data, view, np.random.default_rng([i, r]),
                                           pipeline._warp)
            assert got.shape == want.shape == (size, size, 3) and got.dtype == np.uint8
            diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
            flipped = np.abs(got[:, ::-1].astype(np.int16) - want.astype(np.int16)).mean()
            assert diff.mean() < 3.0 and np.percentile(diff, 99) < 24, (i, r, diff.mean())
            assert diff.mean() < flipped / 4
            means.append(diff.mean())
    # Bilinear without Pillow's widened filter, on shrinks up to 1.5x: a grey level on average.
    assert np.mean(means) < 1.0, np.mean(means)
    if size == 224:  # and against the reference's full Pillow decode of the same JPEGs
        full = pipeline.train_view(pipeline.decode_image(photo_jpegs[0]), view,
                                   np.random.default_rng([0, 0]))
        got = pipeline.fast_train_view(photo_jpegs[0], view, np.random.default_rng([0, 0]),
                                       pipeline._warp)
        assert np.abs(got.astype(np.int16) - full.astype(np.int16)).mean() < 2.0


def test_opencv_resampling_geometry():
    rng = np.random.default_rng(0)
    image = (rng.random((40, 60, 3)) * 255).astype(np.uint8)
    # The whole image at its own size: every output centre lands on an input centre.
    np.testing.assert_array_equal(pipeline._warp(image, (60, 40), (0, 0, 60, 40)), image)
    # A whole-pixel box at scale 1: the crop itself; a box shifted by half a pixel: the mean of
    # two neighbours (rounded).
    np.testing.assert_array_equal(pipeline._warp(image, (20, 10), (5, 7, 25, 17)),
                                  image[7:17, 5:25])
    half = pipeline._warp(image, (20, 10), (5.5, 7, 25.5, 17)).astype(int)
    pair = (image[7:17, 5:25].astype(int) + image[7:17, 6:26]) / 2
    assert np.abs(half - pair).max() <= 1
    # Upscaling agrees with Pillow's bilinear to rounding; a 2x shrink is Pillow's, bit for bit.
    assert pipeline.MAX_WARP_SHRINK < 2.0
    up = pipeline._warp(image, (48, 48), (10.25, 3.5, 34.25, 27.5)).astype(int)
    assert np.abs(up - pipeline._resize(image, (48, 48), (10.25, 3.5, 34.25, 27.5))).max() <= 2
    np.testing.assert_array_equal(pipeline._warp(image, (30, 20), (0, 0, 60, 40)),
                                  pipeline._resize(image, (30, 20), (0, 0, 60, 40)))
    # Through train_batches, on arrays: the same flips and crops as decoder='fast' (upscaled here;
    # OpenCV places samples to 1/32 pixel, a few grey levels on this noise at most; a mirrored or
    # shifted crop would differ by tens).
    view = pipeline.ViewConfig(image_size=48, resize_size=48, crop_scale=(0.3, 1.0))
    source = [{"image": image, "label": 0}] * 8
    a = next(pipeline.train_batches(source, np.arange(8), view, 8, seed=3, decoder="opencv"))
    b = next(pipeline.train_batches(source, np.arange(8), view, 8, seed=3, decoder="fast"))
    diff = np.abs(a["image"].astype(int) - b["image"])
    assert diff.mean() < 1.0 and diff.max() <= 12


def test_fast_view_falls_back_where_it_cannot_decode_less(tmp_path):
    rng = np.random.default_rng(0)
    pixels = (rng.random((90, 120, 3)) * 255).astype(np.uint8)
    view = pipeline.ViewConfig(image_size=24, resize_size=24)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: Pillow applies it, the fast decoder would not
    import io

    rotated, png = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).save(rotated, "JPEG", exif=exif.tobytes())
    Image.fromarray(pixels).save(png, "PNG")
    for value in (rotated.getvalue(), png.getvalue(), pixels):
        want = pipeline.train_view(pipeline.decode_image(value), view, np.random.default_rng(5))
        got = pipeline.fast_train_view(value, view, np.random.default_rng(5))
        np.testing.assert_array_equal(got, want)
    assert pipeline.decode_image(rotated.getvalue()).shape == (120, 90, 3)
    with pytest.raises(ValueError, match="decoder 'turbo' must be one of"):
        next(pipeline.train_batches([], np.arange(4), view, 2, seed=0, decoder="turbo"))
