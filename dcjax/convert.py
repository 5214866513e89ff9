r"""Networks in and out of the official DeepCluster checkpoint layout (docs/interop.md).

    python -m dcjax.convert --from_torch=checkpoint.pth.tar [--arch=alexnet|vgg16] --out=DIR
    python -m dcjax.convert --to_torch=FILE.pth --workdir=RUN [--step=N]

`--from_torch` reads a PyTorch state dict in the official layout (`dcjax.models.interop`; a leading
`module.`, `features.module.` and a {'state_dict': ...} checkpoint as the official main.py saves it
are accepted; the top layer may be absent; the Sobel layers, when present, must hold dcjax's
constants) and writes DIR/network.npz + DIR/network.json, which `python -m dcjax.evaluate
--init=DIR` and a training run (`--config.model.init=DIR`) use. `--to_torch` writes a run's network
(latest or --step checkpoint) in the same layout, saved as the official main.py saves:
{'epoch', 'arch', 'state_dict'}. The round trip is exact. Reading or writing .pth files needs
PyTorch (the CPU build is enough).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcjax.models.interop import (
    ARCHS,
    ConvertError,
    feature_indices,
    from_torch_state,
    save_network,
    to_torch_state,
)


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
    if given or in_file:
        return given or in_file
    convs = {k for k in state if k.removeprefix("module.").removeprefix("features.module.")
             .startswith("features.") and k.endswith(".weight") and np.ndim(state[k]) == 4}
    for arch in ARCHS:
        if len(convs) == len(feature_indices(arch)):
            return arch
    raise ConvertError(f"--from_torch={path}: {len(convs)} conv layers match neither "
                       f"{' nor '.join(ARCHS)}; give --arch")


def write_torch(path: str | Path, state: dict[str, np.ndarray], arch: str, epoch: int) -> None:
    torch = _torch()
    if Path(path).exists():
        raise ConvertError(f"--to_torch={path} exists already; choose another file")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epoch, "arch": arch,
                "state_dict": {k: torch.from_numpy(np.array(v)) for k, v in state.items()}},
               str(path))


def main(argv: list[str]) -> None:
    from absl import flags

    from dcjax import cli

    f = flags.FLAGS

    def body() -> None:
        if bool(f.from_torch) == bool(f.to_torch):
            raise ConvertError("give exactly one of --from_torch=FILE (with --arch, --out) and "
                               "--to_torch=FILE (with --workdir)")
        if f.from_torch:
            if not f.out:
                raise ConvertError("--from_torch needs --out=DIR")
            state, in_file = read_torch(f.from_torch)
            arch = choose_arch(f.from_torch, f.arch, in_file, state)
            params, stats, info = from_torch_state(state, arch)
            info["source"] = str(f.from_torch)
            save_network(f.out, params, stats, info)
            print(f"{info['arch']} (k={info['k']}, fc {info['fc_dim']}) written to {f.out}; use "
                  f"it with python -m dcjax.evaluate --init={f.out} or --config.model.init={f.out}")
            return
        if not f.workdir:
            raise ConvertError("--to_torch needs --workdir=RUN")
        import jax

        from dcjax.runs import config_from_run, load_network

        config = config_from_run(f.workdir)
        if config.model.name not in ARCHS:
            raise ConvertError(f"the run's model {config.model.name!r} has no official layout "
                               f"(only {' and '.join(ARCHS)} have)")
        net = load_network(config, f.workdir, "trained", f.step)
        state = to_torch_state(jax.device_get(net.params), jax.device_get(net.batch_stats),
                               config.model.name, sobel=bool(config.model.sobel))
        write_torch(f.to_torch, state, config.model.name, int(net.epochs_trained))
        print(f"{config.model.name} of {f.workdir} (step {net.step}) written to {f.to_torch} in "
              f"the official layout")

    cli.run_command(argv, body)


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("from_torch", None, "An official-layout .pth / .pth.tar to convert.")
    flags.DEFINE_enum("arch", None, list(ARCHS), "The architecture of --from_torch (default: the "
                      "file's own arch field, else what its layers say).")
    flags.DEFINE_string("out", None, "Folder for the converted network (--from_torch).")
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
