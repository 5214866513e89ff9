"""Networks in the official DeepCluster checkpoint layout and back (docs/interop.md).

`from_torch_state` turns a PyTorch state dict in the official layout into dcjax's `params` and
`batch_stats`; `to_torch_state` is its exact inverse. The layout: `sobel.0.*` (the 1x1 grayscale
conv), `sobel.1.*` (the Sobel pair), `features.N.*` or `features.module.N.*` (conv OIHW weights and
biases; BatchNorm weight / bias / running_mean / running_var / num_batches_tracked), `classifier.N.*`
(fc6, whose inputs are in channel-first order, and fc7), and `top_layer.*` when present. A
converted network is stored as DIR/network.npz ('/'-joined keys) + DIR/network.json; `load_into`
puts it in place of a configured model's variables. The command line is `dcjax/convert.py`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from dcjax.models.sobel import SOBEL_X, SOBEL_Y

ARCHS = ("alexnet", "vgg16")
NETWORK_FILE, INFO_FILE = "network.npz", "network.json"
# Indices in the official `features` Sequential: [Conv, BN, ReLU] per conv, one MaxPool per 'M'.
_ALEXNET_CFG = [96, "M", 256, "M", 384, 384, 256, "M"]
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"]
# (fc6, fc7) indices in the official `classifier` Sequential.
_CLASSIFIER = {"alexnet": (1, 4), "vgg16": (0, 3)}


class ConvertError(ValueError):
    """A state dict that is not in the official layout, or does not fit the architecture."""


def feature_indices(arch: str) -> list[int]:
    """The `features` index of conv1, conv2, ... in the official Sequential (BN at index + 1)."""
    cfg = {"alexnet": _ALEXNET_CFG, "vgg16": _VGG16_CFG}[arch]
    out, i = [], 0
    for v in cfg:
        if v == "M":
            i += 1
        else:
            out.append(i)
            i += 3
    return out


def _strip(key: str) -> str:
    return re.sub(r"(^|\.)module\.", r"\1", key)


def sobel_state() -> dict[str, np.ndarray]:
    """The official Sobel layers' values, as dcjax's constants give them."""
    return {"sobel.0.weight": np.full((1, 3, 1, 1), 1.0 / 3.0, np.float32),
            "sobel.0.bias": np.zeros(1, np.float32),
            "sobel.1.weight": np.stack([SOBEL_X, SOBEL_Y])[:, None].astype(np.float32),
            "sobel.1.bias": np.zeros(2, np.float32)}


def from_torch_state(state: dict[str, Any], arch: str) -> tuple[dict, dict, dict]:
    """(params, batch_stats, info) of dcjax's model from an official-layout state dict (numpy or
    torch tensors). info: {'arch', 'k' (None without a top layer), 'fc_dim', 'sobel'}."""
    if arch not in ARCHS:
        raise ConvertError(f"--arch={arch!r} must be one of {ARCHS}")
    sd = {_strip(k): np.asarray(_numpy(v)) for k, v in state.items()}
    sobel = any(k.startswith("sobel.") for k in sd)
    if sobel:
        for key, want in sobel_state().items():
            if key not in sd or sd[key].shape != want.shape or not np.allclose(sd[key], want,
                                                                                atol=1e-6):
                raise ConvertError(f"{key} does not hold the Sobel front end dcjax applies "
                                   f"(grayscale 1/3, the two Sobel kernels, zero bias)")
    params, stats = {}, {}
    used = {k for k in sd if k.startswith("sobel.") or k.endswith("num_batches_tracked")}

    def take(key):
        if key not in sd:
            raise ConvertError(f"the state dict has no {key!r} (is it a {arch} in the official "
                               f"layout? it has e.g. {sorted(sd)[:4]})")
        used.add(key)
        return sd[key].astype(np.float32)

    for n, i in enumerate(feature_indices(arch), start=1):
        params[f"conv{n}"] = {"kernel": take(f"features.{i}.weight").transpose(2, 3, 1, 0),
                              "bias": take(f"features.{i}.bias")}
        params[f"bn{n}"] = {"scale": take(f"features.{i + 1}.weight"),
                            "bias": take(f"features.{i + 1}.bias")}
        stats[f"bn{n}"] = {"mean": take(f"features.{i + 1}.running_mean"),
                           "var": take(f"features.{i + 1}.running_var")}
    f6, f7 = _CLASSIFIER[arch]
    w6 = take(f"classifier.{f6}.weight")  # [fc, C * H * W], inputs channel-first
    channels = params[f"conv{len(feature_indices(arch))}"]["kernel"].shape[-1]
    side = int(round((w6.shape[1] / channels) ** 0.5))
    if channels * side * side != w6.shape[1]:
        raise ConvertError(f"classifier.{f6}.weight has {w6.shape[1]} inputs, not a square map of "
                           f"{channels} channels")
    # dcjax flattens [H, W, C] (channels last): reorder fc6's inputs from (C, H, W).
    k6 = w6.reshape(w6.shape[0], channels, side, side).transpose(2, 3, 1, 0).reshape(-1, w6.shape[0])
    params["fc6"] = {"kernel": k6, "bias": take(f"classifier.{f6}.bias")}
    params["fc7"] = {"kernel": take(f"classifier.{f7}.weight").T,
                     "bias": take(f"classifier.{f7}.bias")}
    k = None
    if "top_layer.weight" in sd:
        params["top_layer"] = {"kernel": take("top_layer.weight").T,
                               "bias": take("top_layer.bias")}
        k = int(params["top_layer"]["bias"].shape[0])
    left = sorted(set(sd) - used)
    if left:
        raise ConvertError(f"{len(left)} key(s) of the state dict have no place in dcjax's {arch}: "
                           f"{left[:5]}")
    info = {"arch": arch, "k": k, "fc_dim": int(params["fc7"]["bias"].shape[0]), "sobel": sobel}
    return params, stats, info


def to_torch_state(params: dict, batch_stats: dict, arch: str,
                   sobel: bool = True) -> dict[str, np.ndarray]:
    """The official-layout state dict (numpy arrays, key order of the official model) of dcjax's
    `params` / `batch_stats`: the inverse of `from_torch_state`."""
    if arch not in ARCHS:
        raise ConvertError(f"arch {arch!r} must be one of {ARCHS}")
    p = {k: {kk: np.asarray(vv, np.float32) for kk, vv in v.items()} for k, v in params.items()}
    s = {k: {kk: np.asarray(vv, np.float32) for kk, vv in v.items()} for k, v in batch_stats.items()}
    out = {}
    for n, i in enumerate(feature_indices(arch), start=1):
        out[f"features.{i}.weight"] = p[f"conv{n}"]["kernel"].transpose(3, 2, 0, 1)
        out[f"features.{i}.bias"] = p[f"conv{n}"]["bias"]
        out[f"features.{i + 1}.weight"] = p[f"bn{n}"]["scale"]
        out[f"features.{i + 1}.bias"] = p[f"bn{n}"]["bias"]
        out[f"features.{i + 1}.running_mean"] = s[f"bn{n}"]["mean"]
        out[f"features.{i + 1}.running_var"] = s[f"bn{n}"]["var"]
        out[f"features.{i + 1}.num_batches_tracked"] = np.zeros((), np.int64)
    f6, f7 = _CLASSIFIER[arch]
    k6 = p["fc6"]["kernel"]
    channels = p[f"conv{len(feature_indices(arch))}"]["kernel"].shape[-1]
    side = int(round((k6.shape[0] / channels) ** 0.5))
    out[f"classifier.{f6}.weight"] = k6.reshape(side, side, channels, -1).transpose(
        3, 2, 0, 1).reshape(k6.shape[1], -1)
    out[f"classifier.{f6}.bias"] = p["fc6"]["bias"]
    out[f"classifier.{f7}.weight"] = p["fc7"]["kernel"].T
    out[f"classifier.{f7}.bias"] = p["fc7"]["bias"]
    if "top_layer" in p:
        out["top_layer.weight"] = p["top_layer"]["kernel"].T
        out["top_layer.bias"] = p["top_layer"]["bias"]
    if sobel:  # the official model creates its Sobel layers last
        out.update(sobel_state())
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _numpy(v):
    return v.detach().cpu().numpy() if hasattr(v, "detach") else v


# --------------------------------------------------------------------------- files


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    out: dict = {}
    for key, v in flat.items():
        node = out
        *path, leaf = key.split("/")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = v
    return out


def save_network(directory: str | Path, params: dict, batch_stats: dict, info: dict) -> Path:
    """Writes DIR/network.npz and DIR/network.json (refuses to overwrite them)."""
    d = Path(directory)
    if (d / NETWORK_FILE).exists():
        raise ConvertError(f"{d / NETWORK_FILE} exists already; choose another --out")
    d.mkdir(parents=True, exist_ok=True)
    arrays = {f"params/{k}": v for k, v in _flatten(params).items()}
    arrays.update({f"batch_stats/{k}": v for k, v in _flatten(batch_stats).items()})
    np.savez(d / NETWORK_FILE, **arrays)
    (d / INFO_FILE).write_text(json.dumps(info, indent=1))
    return d


def is_network_dir(path: str | Path) -> bool:
    return (Path(path) / NETWORK_FILE).exists() and (Path(path) / INFO_FILE).exists()


def load_network_dir(directory: str | Path) -> tuple[dict, dict, dict]:
    """(params, batch_stats, info) written by `save_network`."""
    d = Path(directory)
    if not is_network_dir(d):
        raise ConvertError(f"{d} holds no converted network ({NETWORK_FILE} and {INFO_FILE}); "
                           f"make one with python -m dcjax.convert --from_torch=FILE --out={d}")
    with np.load(d / NETWORK_FILE) as z:
        flat = {k: z[k] for k in z.files}
    tree = _unflatten(flat)
    return tree.get("params", {}), tree.get("batch_stats", {}), json.loads((d / INFO_FILE).read_text())


def check_fits(params: dict, batch_stats: dict, want_params: dict, want_stats: dict,
               what: str) -> None:
    """ConvertError naming the first layer whose shape differs from the configured model's (the
    top layer may be absent or of another k: it is drawn afresh)."""
    have = _flatten({"params": params, "batch_stats": batch_stats})
    want = _flatten({"params": want_params, "batch_stats": want_stats})
    for key, v in want.items():
        if key.startswith("params/top_layer/"):
            continue
        if key not in have:
            raise ConvertError(f"{what} has no {key}: it is not this config's architecture")
        if tuple(have[key].shape) != tuple(v.shape):
            raise ConvertError(f"{what}: {key} has shape {tuple(have[key].shape)}, the config's "
                               f"model needs {tuple(v.shape)} (check --config's model and "
                               f"image size)")


def load_into(directory: str | Path, params: Any, batch_stats: Any) -> tuple[dict, dict]:
    """The converted network of `directory` in place of the configured model's `params` and
    `batch_stats` (a ConvertError if a layer differs); the configured top layer is kept where the
    converted one is absent or of another k."""
    import jax

    have_p, have_s, _ = load_network_dir(directory)
    want_p, want_s = jax.device_get(params), jax.device_get(batch_stats)
    check_fits(have_p, have_s, want_p, want_s, str(directory))
    out_p = {k: {kk: np.asarray(have_p[k][kk], np.float32) for kk in v} for k, v in want_p.items()
             if k != "top_layer"}
    top = have_p.get("top_layer")
    fits = top is not None and all(top[kk].shape == np.shape(want_p["top_layer"][kk])
                                   for kk in want_p["top_layer"])
    out_p["top_layer"] = ({kk: np.asarray(top[kk], np.float32) for kk in want_p["top_layer"]}
                          if fits else want_p["top_layer"])
    out_s = {k: {kk: np.asarray(have_s[k][kk], np.float32) for kk in v} for k, v in want_s.items()}
    return out_p, out_s
