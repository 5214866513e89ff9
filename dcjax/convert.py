r"""Networks in and out of the released checkpoint layouts (docs/interop.md).

    python -m dcjax.convert --from_torch=checkpoint.pth.tar [--arch=NAME] [--method=M] --out=DIR
    python -m dcjax.convert --to_torch=FILE.pth --workdir=RUN [--step=N]
    python -m dcjax.convert --fetch=NAME --out=DIR      (--list prints the names)

`--from_torch` reads a PyTorch state dict (`dcjax.models.interop`): AlexNet / VGG16 in the official
DeepCluster layout (a leading `module.`, `features.module.` and a {'state_dict': ...} checkpoint as
the official main.py saves it are accepted; the top layer may be absent; the Sobel layers, when
present, must hold dcjax's constants), ResNet-18 / ResNet-50 in torchvision's layout (`fc` optional;
a 3x3 stem is the CIFAR stem, a 2-channel conv1 the Sobel front end), and swav's DeepCluster-v2
checkpoints (the ResNet trunk, `projection_head.*`, `prototypes.prototypes0..N`, `module.` prefix).
The architecture and the method come from the file (its `arch` field, else its layers); --arch and
--method, when given, must agree with it. It writes DIR/network.npz + DIR/network.json, which
`python -m dcjax.evaluate --init=DIR`, export / predict `--init=DIR` and a training run
(`--config.model.init=DIR`) use. `--to_torch` writes a run's network (latest or --step
checkpoint) in the layout it came from: AlexNet / VGG16 as the official main.py saves
({'epoch', 'arch', 'state_dict'}), a ResNet as a torchvision state dict, a DeepCluster-v2 network
as swav releases it. The round trip is exact. `--fetch=NAME` downloads a released network
(dcjax.releases: the official AlexNet / VGG16, swav's DeepCluster-v2 ResNet-50s), verifies it and
converts it in one step; `--fetch=URL --sha256=HEX` does the same for any file. Reading or
writing .pth files needs PyTorch (the CPU build is enough).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcjax.models.interop import (
    ARCHS,
    OFFICIAL,
    RESNETS,
    ConvertError,
    feature_indices,
    from_torch_state,
    resnet_arch,
    save_network,
    to_torch_state,
)

METHODS = ("deepcluster", "deepcluster_v2")


def _torch():
    try:
        import torch
    except ImportError as e:
        raise ConvertError("reading or writing .pth files needs PyTorch (the CPU build is "
                           "enough): pip install torch") from e
    return torch


def read_torch(path: str | Path) -> tuple[dict, str | None]:
    """(state dict, the file's own `arch` field or None)."""
    torch = _torch()
    if not Path(path).exists():
        raise ConvertError(f"--from_torch={path}: no such file")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        first = str(e).splitlines()[0] if str(e) else ""
        raise ConvertError(f"--from_torch={path} is not a readable PyTorch file "
                           f"({type(e).__name__}: {first})") from e
    arch = None
    if isinstance(obj, dict) and "state_dict" in obj:
        arch = obj.get("arch")
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ConvertError(f"--from_torch={path} holds a {type(obj).__name__}, not a state dict")
    return obj, (str(arch).lower() if arch else None)


def choose_arch(path: str | Path, given: str | None, in_file: str | None, state: dict) -> str:
    """The architecture to read `state` as: --arch when given, else the file's `arch` field, else
    what the state dict's conv count says; a --arch the file contradicts is refused."""
    if in_file is not None and in_file not in ARCHS:
        raise ConvertError(f"--from_torch={path} is a {in_file!r} checkpoint; dcjax reads the "
                           f"official layout of {' and '.join(ARCHS)}")
    if given and in_file and given != in_file:
        raise ConvertError(f"--arch={given} but --from_torch={path} says arch={in_file!r}; drop "
                           f"--arch or give --arch={in_file}")
    found = resnet_arch(state)
    if given and found and given != found:
        raise ConvertError(f"--arch={given} but --from_torch={path} holds a {found} (by its "
                           f"blocks and its stem); drop --arch or give --arch={found}")
    if given or in_file or found:
        return given or in_file or found
    convs = {k for k in state if k.removeprefix("module.").removeprefix("features.module.")
             .startswith("features.") and k.endswith(".weight") and np.ndim(state[k]) == 4}
    for arch in OFFICIAL:
        if len(convs) == len(feature_indices(arch)):
            return arch
    raise ConvertError(f"--from_torch={path}: {len(convs)} conv layers match neither "
                       f"{' nor '.join(OFFICIAL)} and it has no torchvision ResNet layers; give "
                       f"--arch")


def write_torch(path: str | Path, state: dict[str, np.ndarray], arch: str, epoch: int) -> None:
    """AlexNet / VGG16 as the official main.py saves ({'epoch', 'arch', 'state_dict'}); ResNets
    as a plain state dict, as torchvision and swav release theirs."""
    torch = _torch()
    if Path(path).exists():
        raise ConvertError(f"--to_torch={path} exists already; choose another file")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
    torch.save(tensors if arch in RESNETS else
               {"epoch": epoch, "arch": arch, "state_dict": tensors}, str(path))


def convert_file(path: str | Path, out: str | None, arch: str | None = None,
                 method: str | None = None, extra: dict | None = None,
                 flag: str = "--from_torch", check=None) -> dict:
    """Converts a released-layout file into OUT/network.npz + network.json; returns its info."""
    if not out:
        raise ConvertError(f"{flag} needs --out=DIR")
    state, in_file = read_torch(path)
    arch = choose_arch(path, arch, in_file, state)
    params, stats, info = from_torch_state(state, arch)
    found = info.get("method", "deepcluster")
    if method and method != found:
        raise ConvertError(f"--method={method} but {flag}={path} holds a {found} network"
                           + (" (no projection_head / prototypes)" if found == "deepcluster" else
                              " (projection_head and prototypes)"))
    info["source"] = str(path)
    info.update(extra or {})
    if check is not None:
        check(info)  # raises before anything is written
    save_network(out, params, stats, info)
    what = (f"prototypes {tuple(info['prototypes'])}, projection {info['hidden_dim']} -> "
            f"{info['feat_dim']}" if found == "deepcluster_v2" else f"k={info['k']}")
    print(f"{info['arch']} {found} ({what}, features {info['fc_dim']}) written to {out}; use it "
          f"with python -m dcjax.export --init={out}, python -m dcjax.evaluate --init={out} or "
          f"--config.model.init={out}")
    return info


def fetch(spec: str, sha256: str | None, out: str | None, arch: str | None = None,
          method: str | None = None) -> dict:
    """--fetch=NAME_OR_URL: download (verified, dcjax.releases), then convert into OUT."""
    from dcjax import releases
    from dcjax.models.interop import NETWORK_FILE

    if not out:
        raise ConvertError("--fetch needs --out=DIR")
    if (Path(out) / NETWORK_FILE).exists():
        raise ConvertError(f"{Path(out) / NETWORK_FILE} exists already; choose another --out")
    url, expected, release = releases.resolve(spec, sha256)
    if release is not None:
        for flag, given, listed in (("arch", arch, release.arch),
                                    ("method", method, release.method)):
            if given and given != listed:
                raise ConvertError(f"--{flag}={given} but {spec} is a {listed} network; drop "
                                   f"--{flag}")
    path, digest, cached = releases.download(url, expected)
    print(f"{'cached' if cached else 'downloaded'} {url} -> {path}, sha256 {digest} "
          + ("(verified)" if expected else
             "(dcjax's table records no checksum for it yet: compare it with a trusted copy and "
             "pin it with --sha256)"))

    def as_listed(info: dict) -> None:
        found = (info["arch"], info.get("method", "deepcluster"))
        if release is not None and found != (release.arch, release.method):
            raise ConvertError(f"{url} holds a {' '.join(found)} network, not the "
                               f"{release.arch} {release.method} that dcjax's table lists")

    return convert_file(path, out, arch, method, flag="--fetch", check=as_listed,
                        extra={"source_url": url, "source_sha256": digest})


def main(argv: list[str]) -> None:
    from absl import flags

    from dcjax import cli

    f = flags.FLAGS

    def body() -> None:
        if f.list:
            from dcjax.releases import table

            print(table())
            return
        if sum(map(bool, (f.from_torch, f.to_torch, f.fetch))) != 1:
            raise ConvertError("give exactly one of --from_torch=FILE or --fetch=NAME (with "
                               "--out=DIR) and --to_torch=FILE (with --workdir)")
        if f.fetch:
            fetch(f.fetch, f.sha256, f.out, f.arch, f.method)
            return
        if f.from_torch:
            convert_file(f.from_torch, f.out, f.arch, f.method)
            return
        if not f.workdir:
            raise ConvertError("--to_torch needs --workdir=RUN")
        import jax

        from dcjax.runs import config_from_run, load_network

        config = config_from_run(f.workdir)
        if config.model.name not in ARCHS:
            raise ConvertError(f"the run's model {config.model.name!r} has no released layout "
                               f"(only {', '.join(ARCHS)} have)")
        net = load_network(config, f.workdir, "trained", f.step)
        state = to_torch_state(jax.device_get(net.params), jax.device_get(net.batch_stats),
                               config.model.name, sobel=bool(config.model.sobel))
        write_torch(f.to_torch, state, config.model.name, int(net.epochs_trained))
        layout = ("swav's layout" if "backbone" in net.params else "torchvision's layout"
                  if config.model.name in RESNETS else "the official layout")
        print(f"{config.model.name} of {f.workdir} (step {net.step}) written to {f.to_torch} in "
              f"{layout}")

    cli.run_command(argv, body)


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("from_torch", None, "A released-layout .pth / .pth.tar to convert.")
    flags.DEFINE_enum("arch", None, list(ARCHS), "The architecture of --from_torch (default: the "
                      "file's own arch field, else what its layers say).")
    flags.DEFINE_enum("method", None, list(METHODS), "The method --from_torch was trained with "
                      "(default: what its layers say; a DeepCluster-v2 file has a projection head "
                      "and prototypes).")
    flags.DEFINE_string("fetch", None, "Download, verify and convert a released network: a name "
                        "of dcjax.releases' table (--list) or a URL with --sha256.")
    flags.DEFINE_string("sha256", None, "The sha256 --fetch's file must have (default: the "
                        "table's, when it records one).")
    flags.DEFINE_bool("list", False, "Print the table of released networks and exit.")
    flags.DEFINE_string("out", None, "Folder for the converted network (--from_torch, --fetch).")
    flags.DEFINE_string("to_torch", None, "A .pth file to write the run's network to.")
    flags.DEFINE_string("workdir", None, "The run whose network --to_torch writes.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


if __name__ == "__main__":
    import os

    from absl import app

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _define_flags()
    from dcjax import cli

    app.run(main, flags_parser=cli.parse_flags)
