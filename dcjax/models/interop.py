"""Networks in the released checkpoint layouts and back (docs/interop.md).

AlexNet / VGG16: the official DeepCluster layout. ResNets: torchvision's layout (`conv1`, `bn1`,
`layer1-4.B.conv1..3 / bn1..3 / downsample.0-1`, `fc`), and for DeepCluster-v2 swav's
(src/resnet50.py: the same trunk, `projection_head.0/1/3` = Linear, BatchNorm1d, Linear and
`prototypes.prototypes0..N`, bias-free, saved from DistributedDataParallel with a `module.` prefix).

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dcjax.models.sobel import SOBEL_X, SOBEL_Y

OFFICIAL = ("alexnet", "vgg16")  # the official DeepCluster layout
RESNETS = ("resnet18", "resnet50", "resnet18_cifar", "resnet50_cifar")  # torchvision / swav layout
ARCHS = (*OFFICIAL, *RESNETS)
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
    if arch not in OFFICIAL:
        return []
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
    if arch in RESNETS:
        return _resnet_from_torch(sd, arch)
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
    if arch in RESNETS:
        return _resnet_to_torch(params, batch_stats, arch)
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


# --------------------------------------------------------------------------- ResNets


def _resnet_layers(arch: str) -> list[tuple[str, str, str]]:
    """(dcjax module, torchvision prefix, 'conv' | 'bn') of every trunk layer, in torchvision's
    order."""
    from dcjax.models.resnet import DEPTHS, STAGES

    depth = 50 if arch.startswith("resnet50") else 18
    convs = 3 if depth >= 50 else 2
    out = [("conv1", "conv1", "conv"), ("bn1", "bn1", "bn")]
    for s, (stage, blocks) in enumerate(zip(STAGES, DEPTHS[depth])):
        for b in range(blocks):
            for i in range(1, convs + 1):
                out += [(f"{stage}_{b}_conv{i}", f"layer{s + 1}.{b}.conv{i}", "conv"),
                        (f"{stage}_{b}_bn{i}", f"layer{s + 1}.{b}.bn{i}", "bn")]
            if b == 0 and (s > 0 or depth >= 50):  # the width or the stride changes
                out += [(f"{stage}_{b}_downsample_conv", f"layer{s + 1}.{b}.downsample.0", "conv"),
                        (f"{stage}_{b}_downsample_bn", f"layer{s + 1}.{b}.downsample.1", "bn")]
    return out


def resnet_arch(state: dict[str, Any]) -> str | None:
    """The ResNet a torchvision / swav-layout state dict holds (by its blocks and its stem), or
    None when it is not one."""
    sd = {_strip(k) for k in state}
    if "conv1.weight" not in sd or "layer4.0.conv1.weight" not in sd:
        return None
    depth = 50 if "layer1.0.conv3.weight" in sd else 18
    kernel = np.shape(_numpy(state[next(k for k in state if _strip(k) == "conv1.weight")]))
    return f"resnet{depth}" + ("_cifar" if kernel[-1] == 3 else "")


def _resnet_from_torch(sd: dict[str, np.ndarray], arch: str) -> tuple[dict, dict, dict]:
    used = {k for k in sd if k.endswith("num_batches_tracked")}

    def take(key):
        if key not in sd:
            found = resnet_arch(sd)
            hint = (f"it holds a {found}" if found else
                    f"it is not a torchvision-layout ResNet; it has e.g. {sorted(sd)[:4]}")
            raise ConvertError(f"the state dict has no {key!r} for {arch} ({hint})")
        used.add(key)
        return sd[key].astype(np.float32)

    trunk, stats = {}, {}
    for name, prefix, kind in _resnet_layers(arch):
        if kind == "conv":
            trunk[name] = {"kernel": take(f"{prefix}.weight").transpose(2, 3, 1, 0)}
        else:
            trunk[name] = {"scale": take(f"{prefix}.weight"), "bias": take(f"{prefix}.bias")}
            stats[name] = {"mean": take(f"{prefix}.running_mean"),
                           "var": take(f"{prefix}.running_var")}
    stem = trunk["conv1"]["kernel"]
    want_side = 3 if arch.endswith("_cifar") else 7
    if stem.shape[0] != want_side:
        raise ConvertError(f"conv1 is {stem.shape[0]}x{stem.shape[1]}: the file holds a "
                           f"{resnet_arch(sd)}, not a {arch}")
    if stem.shape[2] not in (2, 3):
        raise ConvertError(f"conv1 takes {stem.shape[2]} channels: 3 (RGB) or 2 (Sobel) expected")
    sobel = stem.shape[2] == 2
    info: dict[str, Any] = {"arch": arch, "k": None, "fc_dim": _feature_dim(arch), "sobel": sobel,
                            "method": "deepcluster"}
    if "fc.weight" in sd:
        trunk["top_layer"] = {"kernel": take("fc.weight").T, "bias": take("fc.bias")}
        info["k"] = int(trunk["top_layer"]["bias"].shape[0])
    params, batch_stats = trunk, stats
    if any(k.startswith(("projection_head.", "prototypes.")) for k in sd):
        head = {"projection_0": {"kernel": take("projection_head.0.weight").T,
                                 "bias": take("projection_head.0.bias")},
                "projection_bn": {"scale": take("projection_head.1.weight"),
                                  "bias": take("projection_head.1.bias")},
                "projection_1": {"kernel": take("projection_head.3.weight").T,
                                 "bias": take("projection_head.3.bias")}}
        head_stats = {"projection_bn": {"mean": take("projection_head.1.running_mean"),
                                        "var": take("projection_head.1.running_var")}}
        prototypes = []
        while f"prototypes.prototypes{len(prototypes)}.weight" in sd:
            w = take(f"prototypes.prototypes{len(prototypes)}.weight")
            head[f"prototypes{len(prototypes)}"] = {"kernel": w.T}
            prototypes.append(int(w.shape[0]))
        if not prototypes and "prototypes.weight" in sd:  # one head: a plain Linear
            head["prototypes0"] = {"kernel": take("prototypes.weight").T}
            prototypes.append(int(head["prototypes0"]["kernel"].shape[1]))
        params = {"backbone": trunk, "head": head}
        batch_stats = {"backbone": stats, "head": head_stats}
        info.update(method="deepcluster_v2", prototypes=prototypes,
                    hidden_dim=int(head["projection_0"]["bias"].shape[0]),
                    feat_dim=int(head["projection_1"]["bias"].shape[0]))
    left = sorted(set(sd) - used)
    if left:
        raise ConvertError(f"{len(left)} key(s) of the state dict have no place in dcjax's {arch}: "
                           f"{left[:5]}")
    return params, batch_stats, info


def _feature_dim(arch: str) -> int:
    return 2048 if arch.startswith("resnet50") else 512


def _resnet_to_torch(params: dict, batch_stats: dict, arch: str) -> dict[str, np.ndarray]:
    """torchvision's layout of a trunk (+ `fc` from the top layer); a DeepCluster-v2 network
    ({'backbone', 'head'}) in swav's layout, `module.` prefix included."""
    v2 = "backbone" in params
    p = jax_free(params["backbone"] if v2 else params)
    s = jax_free(batch_stats["backbone"] if v2 else batch_stats)
    out = {}
    for name, prefix, kind in _resnet_layers(arch):
        if kind == "conv":
            out[f"{prefix}.weight"] = p[name]["kernel"].transpose(3, 2, 0, 1)
        else:
            out[f"{prefix}.weight"] = p[name]["scale"]
            out[f"{prefix}.bias"] = p[name]["bias"]
            out[f"{prefix}.running_mean"] = s[name]["mean"]
            out[f"{prefix}.running_var"] = s[name]["var"]
            out[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
    if not v2:
        if "top_layer" in p:
            out["fc.weight"] = p["top_layer"]["kernel"].T
            out["fc.bias"] = p["top_layer"]["bias"]
        return {k: np.ascontiguousarray(v) for k, v in out.items()}
    h, hs = jax_free(params["head"]), jax_free(batch_stats["head"])
    out.update({"projection_head.0.weight": h["projection_0"]["kernel"].T,
                "projection_head.0.bias": h["projection_0"]["bias"],
                "projection_head.1.weight": h["projection_bn"]["scale"],
                "projection_head.1.bias": h["projection_bn"]["bias"],
                "projection_head.1.running_mean": hs["projection_bn"]["mean"],
                "projection_head.1.running_var": hs["projection_bn"]["var"],
                "projection_head.1.num_batches_tracked": np.zeros((), np.int64),
                "projection_head.3.weight": h["projection_1"]["kernel"].T,
                "projection_head.3.bias": h["projection_1"]["bias"]})
    i = 0
    while f"prototypes{i}" in h:
        out[f"prototypes.prototypes{i}.weight"] = h[f"prototypes{i}"]["kernel"].T
        i += 1
    return {f"module.{k}": np.ascontiguousarray(v) for k, v in out.items()}


def jax_free(tree: dict) -> dict:
    """A nested dict of float32 numpy arrays (from jax arrays or numpy)."""
    return {k: jax_free(v) if isinstance(v, Mapping) else np.asarray(v, np.float32)
            for k, v in tree.items()}


# --------------------------------------------------------------------------- files


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
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


def _drawn_afresh(key: str, have: dict) -> bool:
    """Layers a converted network may lack or hold in another size, taken from the configured
    model's initialisation: the top layer (DeepCluster resets it every epoch), a DeepCluster-v2
    head's prototypes (set to the centroids every epoch), and the whole head when the file has
    none (a trunk into a DeepCluster-v2 model)."""
    if key.startswith(("params/top_layer/", "params/head/prototypes")):
        return True
    return (key.startswith(("params/head/", "batch_stats/head/"))
            and not any(k.startswith("params/head/") for k in have))


def _as_model(params: dict, batch_stats: dict, want_params: dict) -> tuple[dict, dict]:
    """The converted trees nested as the configured model's: a DeepCluster-v2 network
    ({'backbone', 'head'}) gives its trunk to a one-network model, a trunk goes under 'backbone'
    of a DeepCluster-v2 model (its top layer dropped)."""
    if "backbone" in want_params and "backbone" not in params:
        trunk = {k: v for k, v in params.items() if k != "top_layer"}
        return {"backbone": trunk}, {"backbone": batch_stats}
    if "backbone" not in want_params and "backbone" in params:
        return params["backbone"], batch_stats.get("backbone", {})
    return params, batch_stats


def check_fits(params: dict, batch_stats: dict, want_params: dict, want_stats: dict,
               what: str) -> None:
    """ConvertError naming the first layer whose shape differs from the configured model's (the
    layers of `_drawn_afresh` may be absent or of another size)."""
    params, batch_stats = _as_model(params, batch_stats, want_params)
    have = _flatten({"params": params, "batch_stats": batch_stats})
    want = _flatten({"params": want_params, "batch_stats": want_stats})
    for key, v in want.items():
        if _drawn_afresh(key, have):
            continue
        if key not in have:
            raise ConvertError(f"{what} has no {key}: it is not this config's architecture")
        if tuple(have[key].shape) != tuple(v.shape):
            got, need = have[key].shape, v.shape
            if key.endswith("conv1/kernel") and got[:2] + got[3:] == need[:2] + need[3:]:
                raise ConvertError(
                    f"{what}: its first conv takes {got[2]} channels, the config's "
                    f"{need[2]}: set --config.model.sobel={got[2] == 2} (2 channels: the Sobel "
                    f"front end, 3: RGB)")
            raise ConvertError(f"{what}: {key} has shape {tuple(have[key].shape)}, the config's "
                               f"model needs {tuple(v.shape)} (check --config's model and "
                               f"image size)")


def load_into(directory: str | Path, params: Any, batch_stats: Any) -> tuple[dict, dict]:
    """The converted network of `directory` in place of the configured model's `params` and
    `batch_stats` (a ConvertError if a layer differs); the configured model's own values where
    `_drawn_afresh` allows the file to lack them or to hold another size."""
    have_p, have_s, info = load_network_dir(directory)
    return fit_into(have_p, have_s, f"{directory} (a {info.get('arch', '?')})", params,
                    batch_stats)


def fit_into(have_p: dict, have_s: dict, label: str, params: Any, batch_stats: Any
             ) -> tuple[dict, dict]:
    """`load_into` for a network in memory (`label` names it in errors)."""
    import jax

    have_p, have_s = jax.device_get(have_p), jax.device_get(have_s)
    want_p, want_s = jax.device_get(params), jax.device_get(batch_stats)
    check_fits(have_p, have_s, want_p, want_s, label)
    have_p, have_s = _as_model(have_p, have_s, want_p)
    have = _flatten({"params": have_p, "batch_stats": have_s})
    out = {}
    for key, v in _flatten({"params": want_p, "batch_stats": want_s}).items():
        fits = key in have and tuple(have[key].shape) == tuple(np.shape(v))
        out[key] = np.asarray(have[key] if fits else v, np.float32)
    tree = _unflatten(out)
    return tree["params"], tree.get("batch_stats", {})
