"""Decoding any image file to 8-bit RGB, the same way at import and at read time.

`to_rgb8` handles what `PIL.Image.convert('RGB')` gets wrong or leaves out:
  * EXIF orientation (phone photos) is applied, so the pixels are the way the image is shown;
  * 16-bit (PNG, TIFF: modes I;16*, I) and 32-bit integer images are scaled to 8 bit, not clipped
    (convert('RGB') saturates everything above 255: a 16-bit image comes out nearly all white);
    float images (mode F) are taken as [0, 1] when their values lie there, else clipped to
    [0, 255];
  * palette, grey + alpha, CMYK and alpha images go through convert('RGB') (alpha is dropped).
`decode_error` turns a decoder's exception into one line without Python object addresses.
"""

from __future__ import annotations

import io
import re

import numpy as np

_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def needs_conversion(im) -> bool:
    """Whether `to_rgb8(im)` differs from a plain decode + convert('RGB') of the same file."""
    return im.mode in _WIDE_MODES or im.mode == "F" or _orientation(im) not in (0, 1)


def _orientation(im) -> int:
    try:
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - damaged EXIF: show the pixels as stored
        return 1


def to_rgb8(im) -> np.ndarray:
    """A PIL image -> [H, W, 3] uint8 RGB (see the module docstring)."""
    from PIL import ImageOps

    if _orientation(im) not in (0, 1):
        im = ImageOps.exif_transpose(im)
    if im.mode in _WIDE_MODES:
        a = np.asarray(im).astype(np.int64)
        # 16-bit files are read as I;16 or I: their range is 16 bits unless values say more.
        bits = 16 if a.size == 0 or a.max() < 65536 else 32
        a = np.clip(a, 0, None) >> (bits - 8)
        return np.repeat(a.astype(np.uint8)[..., None], 3, axis=-1)
    if im.mode == "F":
        a = np.asarray(im, np.float64)
        a = np.nan_to_num(a)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0
        a = np.clip(np.round(a), 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"))


def decode_bytes(data: bytes) -> np.ndarray:
    """Encoded bytes -> [H, W, 3] uint8 RGB; raises on a file PIL cannot decode."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return to_rgb8(im)


def jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation tag (1-8) of JPEG bytes, 1 when there is none; read from the markers
    before the image data without decoding anything. -1 if the markers cannot be walked."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return -1
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return -1
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no EXIF before it
            return 1
        length = int.from_bytes(data[i + 2:i + 4], "big")
        seg = data[i + 4:i + 2 + length]
        if marker == 0xE1 and seg[:6] == b"Exif\0\0":
            return _tiff_orientation(seg[6:])
        i += 2 + length
    return -1


def _tiff_orientation(t: bytes) -> int:
    if len(t) < 8 or t[:2] not in (b"II", b"MM"):
        return -1
    order = "little" if t[:2] == b"II" else "big"
    ifd = int.from_bytes(t[4:8], order)
    if ifd + 2 > len(t):
        return -1
    for k in range(int.from_bytes(t[ifd:ifd + 2], order)):
        e = ifd + 2 + 12 * k
        if e + 12 > len(t):
            return -1
        if int.from_bytes(t[e:e + 2], order) == 0x0112:
            return int.from_bytes(t[e + 8:e + 10], order)
    return 1


def decode_error(e: BaseException, data: bytes | None = None) -> str:
    """'Kind: reason' of a decoding failure of `data`, in one line, without object addresses."""
    if data is not None and len(data) == 0:
        return "empty file (0 bytes)"
    text = _ADDRESS.sub("(the file's bytes)", " ".join(str(e).split()))
    if type(e).__name__ == "UnidentifiedImageError":
        return "not an image format Pillow can read (cannot identify image file)"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
