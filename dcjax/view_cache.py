"""The deterministic view of a split, decoded once: every extraction after the first reads it back.

DeepCluster extracts features from the same deterministic view (resize + centre crop) of every
image at every epoch. `ViewCache` keeps the uint8 images of the rows this process reads, batch by
batch as `pipeline.ordered_batches` yields them, in one of three places
(`config.data.view_cache`, docs/design.md section 6):

  * 'device': the sharded jax.Arrays the first extraction fed to the network, kept on the devices;
  * 'host': this process's numpy batches, in host memory;
  * 'disk': a memory-mapped .npy in `directory`, one per process, which survives a restart;
  * 'auto': 'device' if the cache takes at most `share` of each local device's memory (on CPU
    devices, of the host's available memory), else 'host' if it takes at most `share` of the
    available host memory, else 'disk' if a directory is given, else no cache;
  * 'off': decode at every extraction.

A later extraction feeds the network exactly the arrays the decoding pass fed it, so its features
are the decoding pass's, bit for bit. The cache is keyed by what determines its contents: the
dataset's files (paths, sizes, modification times), the split, the view, the global batch, the
process layout and the device count. A different key rebuilds it; a build that did not finish
(an interrupted extraction) is never used; the disk cache's key is written last, after its data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from dcjax.sharding import available_memory

MODES = ("auto", "device", "host", "disk", "off")
KEY_FILE = "key.json"


def device_memory_limit(device) -> int | None:
    """Bytes of memory of an accelerator device (None on CPU devices or where unknown)."""
    if device.platform == "cpu":
        return None
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001  (some runtimes do not implement it)
        return None
    return stats.get("bytes_limit")


def files_fingerprint(paths) -> list:
    """[path, size, mtime_ns] of each file: what says the stored data is the same."""
    out = []
    for p in sorted(str(p) for p in paths):
        st = os.stat(p)
        out.append([p, st.st_size, st.st_mtime_ns])
    return out


@dataclasses.dataclass
class _Built:
    key: dict
    mode: str
    images: list | np.ndarray  # per batch: jax.Array (device), numpy (host); memmap (disk)
    label: np.ndarray  # [nb, b] int32
    index: np.ndarray  # [nb, b] int32
    nbytes: int


class ViewCache:
    """One split's deterministic view, cached in `mode` (see the module docstring)."""

    def __init__(self, mode: str = "auto", directory: str | os.PathLike | None = None,
                 share: float = 0.25, dataset: Any = None):
        if mode not in MODES:
            raise ValueError(f"view cache {mode!r} must be one of {MODES}")
        self.mode = mode
        self.directory = Path(directory) if directory else None
        self.share = share
        self.dataset = dataset  # JSON-able identity of the data (files_fingerprint, split, ...)
        self._built: _Built | None = None
        self._building: _Built | None = None
        self.log: list[str] = []  # what it did, one line per decision (the trainer prints them)

    # ------------------------------------------------------------------ keys and placement

    def key(self, view, batch: int, num_batches: int, per_host: int, mesh) -> dict:
        return {"dataset": self.dataset, "view": dataclasses.asdict(view), "batch": batch,
                "num_batches": num_batches, "per_host": per_host,
                "process": [jax.process_index(), jax.process_count()],
                "devices": [int(d.id) for d in mesh.devices.flat]}

    def _place(self, nbytes: int, mesh) -> tuple[str, str]:
        """(mode, why) for a cache of nbytes on this process."""
        if self.mode != "auto":
            return self.mode, "config.data.view_cache"
        local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
        limit = device_memory_limit(local[0]) if local else None
        host = available_memory()
        if limit is not None:
            if nbytes / len(local) <= self.share * limit:
                return "device", f"at most {self.share:.0%} of each device's memory"
        elif host is not None and nbytes <= self.share * host:
            return "device", f"CPU devices; at most {self.share:.0%} of the available host memory"
        if host is not None and nbytes <= self.share * host:
            return "host", f"at most {self.share:.0%} of the available host memory"
        if self.directory is not None:
            return "disk", "too large for the share of device and host memory it may take"
        return "off", "too large for memory and no cache directory"

    # ------------------------------------------------------------------ reading

    def lookup(self, key: dict) -> _Built | None:
        """The finished cache for `key`, from memory or (disk) from a previous process."""
        if self.mode == "off":
            return None
        if self._built is not None and self._built.key == key:
            return self._built
        if self.directory is not None and self.mode in ("auto", "disk"):
            built = self._open_disk(key)
            if built is not None:
                self._built = built
                self.log.append(f"view cache: reading {_mib(built.nbytes)} from {self._dir()}")
                return built
        return None

    def _dir(self) -> Path:
        return self.directory / f"process_{jax.process_index()}"

    def _open_disk(self, key: dict) -> _Built | None:
        folder = self._dir()
        try:
            saved = json.loads((folder / KEY_FILE).read_text())
        except (OSError, ValueError):
            return None
        if saved != json.loads(json.dumps(key)):
            return None
        try:
            images = np.load(folder / "images.npy", mmap_mode="r")
            label = np.load(folder / "label.npy")
            index = np.load(folder / "index.npy")
        except (OSError, ValueError):
            return None
        return _Built(key, "disk", images, label, index, images.nbytes)

    # ------------------------------------------------------------------ building

    def begin(self, key: dict, image_shape: tuple[int, ...], mesh,
              total_images: int | None = None) -> None:
        """Starts a build for `key` (batches of `image_shape` [b, S, S, 3] uint8 on this process;
        `total_images`: the split's images over all processes, for the log line)."""
        self._building = None
        if self.mode == "off":
            return
        nb, per_host = key["num_batches"], key["per_host"]
        nbytes = nb * int(np.prod(image_shape))
        mode, why = self._place(nbytes, mesh)
        rows = f"{nb:,} batch{'es' if nb > 1 else ''} of {per_host:,} images on this process"
        padded = total_images is not None and nb * key["batch"] > total_images
        if total_images is not None:
            rows += f" ({total_images:,} images{', the last batch padded' if padded else ''})"
        self.log.append(f"view cache: {mode} ({why}), {_mib(nbytes)} for {rows}")
        if mode == "off":
            return
        if self._built is not None:  # another key: free it first
            self._built = None
        label = np.zeros((nb, per_host), np.int32)
        index = np.full((nb, per_host), -1, np.int32)
        if mode == "disk":
            folder = self._dir()
            folder.mkdir(parents=True, exist_ok=True)
            (folder / KEY_FILE).unlink(missing_ok=True)  # invalid until the new build finishes
            images = np.lib.format.open_memmap(folder / "images.npy", mode="w+", dtype=np.uint8,
                                               shape=(nb, *image_shape))
        else:
            images = [None] * nb
        self._building = _Built(key, mode, images, label, index, nbytes)

    def put(self, b: int, host_batch: dict, images: jax.Array) -> None:
        """Stores batch b: the host batch (numpy) and the global array fed to the network."""
        built = self._building
        if built is None:
            return
        # The device arrays themselves, or this process's numpy rows (a list, or the memmap's row b).
        built.images[b] = images if built.mode == "device" else host_batch["image"]
        built.label[b] = host_batch["label"]
        built.index[b] = host_batch["index"]

    def finish(self) -> None:
        """Marks the build complete (and, on disk, writes its key last)."""
        built, self._building = self._building, None
        if built is None:
            return
        if built.mode == "disk":
            built.images.flush()
            folder = self._dir()
            np.save(folder / "label.npy", built.label)
            np.save(folder / "index.npy", built.index)
            tmp = folder / (KEY_FILE + ".tmp")
            tmp.write_text(json.dumps(built.key))
            os.replace(tmp, folder / KEY_FILE)
            built.images = np.load(folder / "images.npy", mmap_mode="r")
        self._built = built

    def abandon(self) -> None:
        """Drops an unfinished build (the extraction stopped in its middle)."""
        if self._building is not None:
            logging.info("view cache: an unfinished build was dropped")
        self._building = None

    def take_log(self) -> list[str]:
        lines, self.log = self.log, []
        return lines


def _mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def check_config(config) -> None:
    """config.data.view_cache and view_cache_share; ConfigError naming the bad one."""
    from dcjax.config_lib import finite, require

    d = config.data
    require(d.view_cache in MODES, f"config.data.view_cache={d.view_cache!r} must be one of "
            f"{MODES}")
    share = d.view_cache_share
    require(finite(share) and 0 < share <= 1, f"config.data.view_cache_share={share!r} must be "
            f"in (0, 1]")
