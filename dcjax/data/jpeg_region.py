"""Decoding only a JPEG's crop: libjpeg-turbo's partial decode, through a small C library.

The training view needs only its random crop's rows and columns, at the DCT scale the crop's size
allows. `decode_region` decodes just those (rows above the crop are entropy-decoded without their
inverse DCT, rows below are never read, columns outside the crop are not transformed), at
scale_num/scale_denom in eighths, and returns pixels equal bit for bit to the full decode's at the
same scale (tests/test_jpeg_region.py). The C source (`jpeg_region.c`, beside this file) is compiled
on first use with the system C compiler against libjpeg(-turbo) into a cache folder
($DCJAX_CACHE_DIR, else $XDG_CACHE_HOME/dcjax, else ~/.cache/dcjax), once per source version;
where that cannot be done (no compiler, no libjpeg headers) `library()` is None, one warning says
why, and the training view decodes whole images instead (docs/design.md, "Input pipeline").
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("jpeg_region.c")
MESSAGE = 200  # bytes of libjpeg's message (DCJAX_MESSAGE in the C source)
# libjpeg's J_COLOR_SPACE codes of the streams decode_region reads: JCS_GRAYSCALE, JCS_YCbCr.
GRAYSCALE, YCBCR = 1, 3

_lock = threading.Lock()
_library: list[ctypes.CDLL | None] = []  # [] until the first call of library()


def cache_dir() -> Path:
    """Where the compiled library is kept."""
    if os.environ.get("DCJAX_CACHE_DIR"):
        return Path(os.environ["DCJAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dcjax"


def _compiler() -> str | None:
    for name in (os.environ.get("CC", ""), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build() -> Path:
    """Compiles SOURCE into cache_dir() (if not already there) and returns the library's path.
    Raises RuntimeError with the reason when it cannot."""
    code = SOURCE.read_bytes()
    path = cache_dir() / f"jpeg_region-{hashlib.sha256(code).hexdigest()[:16]}.so"
    if path.exists():
        return path
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)  # processes may build at once
    os.close(fd)
    try:
        done = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", tmp, str(SOURCE), "-ljpeg"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines() or ["(no output)"]
            raise RuntimeError(f"{cc} failed: {lines[0]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))  # a CDLL call releases the GIL: loader threads decode at once
    lib.dcjax_jpeg_header.argtypes = [ctypes.c_char_p, ctypes.c_ulong,
                                      ctypes.POINTER(ctypes.c_int), ctypes.c_char_p]
    lib.dcjax_jpeg_header.restype = ctypes.c_int
    lib.dcjax_jpeg_decode_region.argtypes = (
        [ctypes.c_char_p, ctypes.c_ulong] + [ctypes.c_int] * 6
        + [ctypes.c_void_p, ctypes.c_ulong, ctypes.POINTER(ctypes.c_int), ctypes.c_char_p])
    lib.dcjax_jpeg_decode_region.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled decoder, built on first use; None (after one warning) where it cannot be built
    or loaded, or when $DCJAX_JPEG_REGION is '0'."""
    if _library:
        return _library[0]
    with _lock:
        if not _library:
            lib = None
            if os.environ.get("DCJAX_JPEG_REGION", "1") != "0":
                try:
                    lib = _load(_build())
                except (RuntimeError, OSError) as e:
                    logging.warning("JPEG crop decoding unavailable (%s): the training view decodes "
                                    "whole images", e)
            _library.append(lib)
    return _library[0]


def header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, colour space code) of JPEG bytes; None if libjpeg cannot read the header or
    the library is unavailable."""
    lib = library()
    if lib is None:
        return None
    info = (ctypes.c_int * 4)()
    if lib.dcjax_jpeg_header(data, len(data), info, ctypes.create_string_buffer(MESSAGE)) != 0:
        return None
    return info[0], info[1], info[2]


def scaled_size(width: int, height: int, num: int, den: int) -> tuple[int, int]:
    """libjpeg's output size at DCT scale num/den."""
    return -(-width * num // den), -(-height * num // den)


def decode_region(data: bytes, num: int, den: int, x0: int, y0: int, x1: int, y1: int,
                  width: int) -> tuple[int, int, np.ndarray] | None:
    """Rows [y0, y1) and (at least) columns [x0, x1) of the JPEG decoded at scale num/den, RGB:
    (x, y, pixels [h, w, 3] uint8) with (x, y) the pixels' top-left corner in the scaled image;
    `width` is the scaled image's width (`scaled_size`). None when the stream is neither YCbCr nor
    greyscale (decode it another way); ValueError with libjpeg's message on corrupt data."""
    lib = library()
    if lib is None:
        return None
    capacity = width * (y1 - y0) * 3
    out = np.empty(capacity, np.uint8)
    region = (ctypes.c_int * 4)()
    message = ctypes.create_string_buffer(MESSAGE)
    rc = lib.dcjax_jpeg_decode_region(data, len(data), num, den, x0, y0, x1, y1,
                                      out.ctypes.data, capacity, region, message)
    if rc == -2:
        return None
    if rc == -1:
        raise ValueError(f"JPEG decode failed: {message.value.decode(errors='replace')}")
    if rc != 0:
        raise ValueError(f"JPEG region [{x0}, {x1}) x [{y0}, {y1}) at {num}/{den} is not inside "
                         "the image")
    x, y, w, h = region
    return x, y, out[: w * h * 3].reshape(h, w, 3)
