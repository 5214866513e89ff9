"""Released DeepCluster networks: where they are, and a verified download (`convert --fetch`).

    python -m dcjax.convert --fetch=deepcluster_alexnet --out=networks/alexnet
    python -m dcjax.convert --fetch=https://host/file.pth --sha256=HEX --out=DIR

A download streams into `<dcjax cache>/releases/` ($DCJAX_CACHE_DIR, else $XDG_CACHE_HOME/dcjax,
else ~/.cache/dcjax) under a `.part` name and is renamed to its final name only once it is
complete (as many bytes as the server announced) and its sha256 matches the expected one: an
interrupted or corrupted download leaves nothing that a later call uses (its `.part` is removed;
one left by a killed process is never read and is replaced by the next download). A second
`--fetch` of the same file reads the cache after checking its sha256 again.

The checksum expected is `--sha256` when given, else the table's. The publishers of these files
list no checksums, and this machine cannot reach them, so the table records none yet: such a
download is accepted, its sha256 is printed and written into the converted network's
network.json (`source_sha256`) so that it can be compared with a trusted copy and pinned with
`--sha256` from then on. The files are read with PyTorch's `weights_only=True`, which loads
tensors only: a tampered file cannot run code, it can only hold other weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from dcjax.models.interop import ConvertError


@dataclasses.dataclass(frozen=True)
class Release:
    url: str
    arch: str
    method: str
    sobel: bool
    what: str
    sha256: str | None = None  # None: the publisher lists none and none is recorded here yet


RELEASES: dict[str, Release] = {
    "deepcluster_alexnet": Release(
        "https://dl.fbaipublicfiles.com/deepcluster/alexnet/checkpoint.pth.tar", "alexnet",
        "deepcluster", True, "the paper's AlexNet-BN, ImageNet, 500 epochs, k = 10,000"),
    "deepcluster_vgg16": Release(
        "https://dl.fbaipublicfiles.com/deepcluster/vgg16/checkpoint.pth.tar", "vgg16",
        "deepcluster", True, "the paper's VGG16-BN, ImageNet, k = 10,000"),
    "deepclusterv2_800ep": Release(
        "https://dl.fbaipublicfiles.com/deepcluster/deepclusterv2_800ep_pretrain.pth.tar",
        "resnet50", "deepcluster_v2", False,
        "swav's DeepCluster-v2 ResNet-50, 800 epochs, 2x224 + 6x96 crops, 75.2% linear top-1"),
    "deepclusterv2_400ep": Release(
        "https://dl.fbaipublicfiles.com/deepcluster/deepclusterv2_400ep_pretrain.pth.tar",
        "resnet50", "deepcluster_v2", False,
        "swav's DeepCluster-v2 ResNet-50, 400 epochs, 2x160 + 4x96 crops, 74.3% linear top-1"),
    "deepclusterv2_400ep_2x224": Release(
        "https://dl.fbaipublicfiles.com/deepcluster/deepclusterv2_400ep_2x224_pretrain.pth.tar",
        "resnet50", "deepcluster_v2", False,
        "swav's DeepCluster-v2 ResNet-50, 400 epochs, 2x224 crops, 70.2% linear top-1"),
}

CHUNK = 1 << 20


def cache_dir() -> Path:
    from dcjax.data.jpeg_region import cache_dir as dcjax_cache

    return dcjax_cache() / "releases"


def table() -> str:
    """The released networks as printed by `convert --list` and docs/interop.md."""
    rows = [f"{name:28s} {r.arch:9s} {r.method:15s} {'Sobel' if r.sobel else 'RGB':5s} {r.what}"
            for name, r in RELEASES.items()]
    return "\n".join(rows)


def resolve(spec: str, sha256: str | None) -> tuple[str, str | None, Release | None]:
    """(url, expected sha256 or None, the table's entry or None) of --fetch=NAME_OR_URL."""
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ConvertError(f"--sha256={sha256}: a sha256 is 64 hexadecimal digits")
    if spec in RELEASES:
        r = RELEASES[spec]
        return r.url, sha256 or r.sha256, r
    if "://" in spec:
        if sha256 is None:
            raise ConvertError(f"--fetch={spec} is not in dcjax's table of released networks: "
                               f"give its checksum with --sha256=HEX")
        return spec, sha256, None
    raise ConvertError(f"--fetch={spec}: no released network of that name; the names are "
                       f"{', '.join(RELEASES)} (or give a URL with --sha256)")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _final_path(url: str) -> Path:
    base = url.rstrip("/").rsplit("/", 1)[-1] or "download"
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    return cache_dir() / f"{key}-{base}"


def download(url: str, expected: str | None, progress: bool = True) -> tuple[Path, str, bool]:
    """(the verified file in the cache, its sha256, whether it came from the cache)."""
    final = _final_path(url)
    if final.exists():
        digest = _sha256_file(final)
        if expected is None or digest == expected:
            return final, digest, True
        final.unlink()  # the cache's own copy of another version: downloaded again below
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(final.name + ".*.part"):  # a killed download's, never read
        stale.unlink(missing_ok=True)
    fd, part_name = tempfile.mkstemp(dir=final.parent, prefix=final.name + ".", suffix=".part")
    part = Path(part_name)
    h, got = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=60)  # noqa: S310 - the user's URL
            except (urllib.error.URLError, OSError, ValueError) as e:
                raise ConvertError(f"--fetch: cannot download {url} ({_reason(e)})") from None
            with response:
                total = int(response.headers.get("Content-Length") or 0) or None
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc="download",
                           disable=None if progress else True, leave=False)
                try:
                    while True:
                        try:
                            block = response.read(CHUNK)
                        except (OSError, ValueError) as e:  # IncompleteRead, reset, timeout
                            of = f"{total:,}" if total else "an unknown number of"
                            raise ConvertError(
                                f"--fetch: the download of {url} stopped after {got:,} of {of} "
                                f"bytes ({_reason(e)}); nothing was kept, run the same command "
                                f"again") from None
                        if not block:
                            break
                        out.write(block)
                        h.update(block)
                        got += len(block)
                        bar.update(len(block))
                finally:
                    bar.close()
        if total is not None and got != total:
            raise ConvertError(f"--fetch: the download of {url} stopped after {got:,} of "
                               f"{total:,} bytes; nothing was kept, run the same command again")
        digest = h.hexdigest()
        if expected is not None and digest != expected:
            raise ConvertError(f"--fetch: {url} has sha256 {digest}, not the expected "
                               f"{expected}; refused and deleted (a changed or tampered file)")
        os.replace(part, final)
    finally:
        part.unlink(missing_ok=True)
    return final, digest, False


def _reason(e: BaseException) -> str:
    text = str(getattr(e, "reason", None) or e) or type(e).__name__
    return " ".join(text.split())
