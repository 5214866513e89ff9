"""Crop-only JPEG decoding (dcjax/data/jpeg_region.py) and the training view built on it."""

import io
import logging

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from dcjax.data import jpeg_region, pipeline

pytestmark = pytest.mark.skipif(jpeg_region.library() is None,
                                reason="no C compiler or libjpeg headers on this machine")


def _photo(rng, h, w):
    """Smooth colour structure plus noise: chroma that subsampling and upsampling really change."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 7.0 + c) * np.cos(yy / 11.0 - c) for c in range(3)], -1)
    return np.clip(128 + 90 * base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _encode(array, **options):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90, **options)
    return buf.getvalue()


KINDS = {
    "420": dict(subsampling=2),
    "422": dict(subsampling=1),
    "444": dict(subsampling=0),
    "progressive": dict(subsampling=2, progressive=True),
    "restart": dict(subsampling=2, restart_marker_blocks=3),
}


@pytest.mark.parametrize("kind", [*KINDS, "grey"])
def test_region_is_the_full_decode_bit_for_bit(kind):
    rng = np.random.default_rng(len(kind))
    h, w = 211, 333  # not multiples of the iMCU
    array = _photo(rng, h, w)
    data = (_encode(array[..., 0], subsampling=0) if kind == "grey" else _encode(array, **KINDS[kind]))
    assert jpeg_region.header(data)[:2] == (w, h)
    for num, den in [(1, 1), (1, 2), (1, 4), (1, 8), (3, 8), (5, 8), (7, 8)]:
        sw, sh = jpeg_region.scaled_size(w, h, num, den)
        x, y, full = jpeg_region.decode_region(data, num, den, 0, 0, sw, sh, sw)
        assert (x, y) == (0, 0) and full.shape == (sh, sw, 3)
        if den // num in (1, 2, 4, 8):  # the power-of-two scales: libjpeg-turbo's own full decode
            np.testing.assert_array_equal(
                full, simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=sh, min_width=sw))
        for _ in range(12):
            x0, x1 = sorted(rng.choice(sw + 1, 2, replace=False))
            y0, y1 = sorted(rng.choice(sh + 1, 2, replace=False))
            x, y, part = jpeg_region.decode_region(data, num, den, x0, y0, x1, y1, sw)
            assert y == y0 and x <= x0 and x + part.shape[1] >= x1 and part.shape[0] == y1 - y0
            np.testing.assert_array_equal(part[:, x0 - x: x1 - x], full[y0:y1, x0:x1],
                                          err_msg=f"{kind} {num}/{den} {(x0, y0, x1, y1)}")
    # At scale 1 these are also Pillow's pixels (what the reference decodes).
    with Image.open(io.BytesIO(data)) as im:
        np.testing.assert_array_equal(jpeg_region.decode_region(data, 1, 1, 0, 0, w, h, w)[2],
                                      np.asarray(im.convert("RGB")))


def test_bad_streams_are_errors_or_declined():
    rng = np.random.default_rng(0)
    data = _encode(_photo(rng, 64, 96))
    with pytest.raises(ValueError, match="JPEG decode failed"):  # truncated: Pillow refuses it too
        jpeg_region.decode_region(data[: len(data) // 2], 1, 1, 0, 0, 96, 64, 96)
    with pytest.raises(ValueError, match="JPEG decode failed"):
        jpeg_region.decode_region(b"\xff\xd8not a jpeg at all", 1, 1, 0, 0, 8, 8, 8)
    with pytest.raises(ValueError, match="not inside the image"):
        jpeg_region.decode_region(data, 1, 1, 0, 0, 97, 64, 97)
    assert jpeg_region.header(b"garbage") is None
    buf = io.BytesIO()
    Image.fromarray(_photo(rng, 32, 32)).convert("CMYK").save(buf, format="JPEG")
    assert jpeg_region.decode_region(buf.getvalue(), 1, 1, 0, 0, 32, 32, 32) is None  # not YCbCr


@pytest.fixture(scope="module")
def photo_jpegs():
    """The ImageNet-like JPEGs of the pipeline benchmark (500 x 375, quality 90)."""
    from conftest import shared_file

    from dcjax.bench.pipeline import _tar_images, imagenet_like

    tiles = _tar_images(shared_file("imagenette-128.tar.gz"), "/train/", 4 * 16)
    return imagenet_like(tiles, 16)


@pytest.mark.parametrize("size", [224, 64])
def test_region_view_matches_the_whole_image_views(photo_jpegs, size, monkeypatch):
    """Same crops and flips as train_view; the same pixels as decoder='opencv' on the whole decode
    where the power-of-two scale is kept; on larger shrinks (which the whole-image path hands to
    Pillow) the DCT's antialiased scaling stays within a grey level or so of Pillow, closer than
    the bilinear warp alone would be."""
    view = pipeline.ViewConfig(image_size=size, resize_size=size)
    same = scaled = 0
    dct, warp = [], []
    for i, data in enumerate(photo_jpegs):
        for r in range(8):
            got = pipeline.region_train_view(data, view, np.random.default_rng([i, r]))
            whole = pipeline.fast_train_view(data, view, np.random.default_rng([i, r]),
                                             pipeline._warp)
            ref = pipeline.train_view(pipeline.decode_image(data), view,
                                      np.random.default_rng([i, r]))
            assert got.shape == (size, size, 3) and got.dtype == np.uint8
            diff = np.abs(got.astype(np.int16) - ref).mean()
            assert diff < 3.0 and diff < np.abs(got[:, ::-1].astype(np.int16) - ref).mean() / 4
            h, w = pipeline.decode_image(data).shape[:2]
            top, left, ch, cw = pipeline.random_resized_crop_box(
                h, w, np.random.default_rng([i, r]), view.crop_scale, view.crop_ratio)
            if pipeline._scale_for(h, w, ch, cw, size)[1] == 8:
                scaled += 1
                dct.append(diff)
                with monkeypatch.context() as m:
                    m.setattr(pipeline, "MAX_WARP_SHRINK", 100.0)
                    plain = pipeline.fast_train_view(data, view, np.random.default_rng([i, r]),
                                                     pipeline._warp)
                warp.append(np.abs(plain.astype(np.int16) - ref).mean())
            else:
                np.testing.assert_array_equal(got, whole)
                same += 1
    assert same > 0 and scaled > 0
    assert np.mean(dct) < np.mean(warp) and np.mean(dct) < 1.5, (np.mean(dct), np.mean(warp))


def test_region_view_falls_back_without_the_library(photo_jpegs, monkeypatch):
    view = pipeline.ViewConfig(image_size=224, resize_size=256)
    monkeypatch.setattr(jpeg_region, "_library", [None])
    for i, data in enumerate(photo_jpegs[:4]):
        np.testing.assert_array_equal(
            pipeline.region_train_view(data, view, np.random.default_rng([i])),
            pipeline.fast_train_view(data, view, np.random.default_rng([i]), pipeline._warp))
    # PNG bytes and arrays go the whole-image way too.
    array = pipeline.decode_image(photo_jpegs[0])
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    monkeypatch.undo()
    for value in (buf.getvalue(), array):
        np.testing.assert_array_equal(
            pipeline.region_train_view(value, view, np.random.default_rng([7])),
            pipeline.train_view(array, view, np.random.default_rng([7]), pipeline._warp))


def test_a_failed_build_warns_once_and_leaves_no_file(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("DCJAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "/bin/false")  # a "compiler" that always fails
    monkeypatch.setattr(jpeg_region, "_library", [])
    with caplog.at_level(logging.WARNING):
        assert jpeg_region.library() is None and jpeg_region.library() is None
    assert sum("JPEG crop decoding unavailable" in r.getMessage() for r in caplog.records) == 1
    assert not any((tmp_path / "cache").glob("*.so"))
    # A working compiler builds into the cache folder, once per source version.
    monkeypatch.delenv("CC")
    monkeypatch.setattr(jpeg_region, "_library", [])
    assert jpeg_region.library() is not None
    assert len(list((tmp_path / "cache").glob("jpeg_region-*.so"))) == 1
