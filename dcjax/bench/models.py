r"""Throughput of the input pipeline and of the train step, against references run in the same process.

    python -m dcjax.bench.models [--steps=10] [--batch_224=32] [--skip_torch] [--skip_pipeline]
        [--models=alexnet,alexnet_small,resnet50] [--dtypes=float32,bfloat16]

Prints two Markdown tables:
  * training view (decode + RandomResizedCrop + flip, grain with reader threads) in images/s on
    CIFAR-10 and Imagenette from ../shared/data (imported on first use), against the same
    transforms in a plain single-threaded Python loop;
  * train step (forward + backward + SGD update, BatchNorm, Sobel, k-way head) in images/s, dcjax's
    jitted step against a PyTorch implementation of the reference network and optimiser
    (when torch is installed: `pip install torch`), both on this machine's devices.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from dcjax.bench.common import machine, network_rates  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 10, "Timed train steps per model (after 2 warm-up steps).")
flags.DEFINE_integer("batch_224", 32, "Batch size for the 224 px AlexNet-BN.")
flags.DEFINE_integer("batch_32", 128, "Batch size for the 32 px small AlexNet.")
flags.DEFINE_integer("pipeline_images", 4096, "Images per pipeline measurement.")
flags.DEFINE_integer("threads", 2, "grain threads (each builds whole batches).")
flags.DEFINE_bool("skip_torch", False, "Do not run the PyTorch reference.")
flags.DEFINE_list("bn_variances", ["fast"], "dcjax's BatchNorm variance formulas to time "
                  "(config.model.bn_variance: fast, two_pass).")
flags.DEFINE_bool("skip_pipeline", False, "Do not measure the input pipeline.")
flags.DEFINE_list("dtypes", ["float32"], "Compute dtypes of the train-step rows (bfloat16: "
                  "dcjax's config.model.dtype against PyTorch autocast).")
flags.DEFINE_list("models", ["alexnet", "alexnet_small"], "Train-step rows: alexnet (224 px), "
                  "alexnet_small (32 px), resnet50 (224 px, Sobel, 10,000-way head as "
                  "DeepCluster trains it; batch --batch_224).")
flags.DEFINE_string("shared_data", str(Path(__file__).resolve().parents[3] / "shared" / "data"),
                    "Folder with cifar10-jpg.tar.gz and imagenette-128.tar.gz.")


# --------------------------------------------------------------------------- pipeline


def _dataset(name: str, tarball: str):
    from dcjax.data.datasets import DataError, open_split
    from dcjax.data.importer import prepare

    try:
        return open_split(name, "train")[0]
    except DataError:
        path = Path(FLAGS.shared_data) / tarball
        if not path.exists():
            return None
        prepare(str(path), name, verbose=False)
        return open_split(name, "train")[0]


def bench_pipeline() -> list[tuple]:
    from dcjax.data import pipeline

    rows = []
    for name, tarball, size in (("cifar10_jpg", "cifar10-jpg.tar.gz", 32),
                                ("imagenette128", "imagenette-128.tar.gz", 64),
                                ("imagenette128", "imagenette-128.tar.gz", 112)):
        source = _dataset(name, tarball)
        if source is None:
            rows.append((f"{name} @ {size}px", "data absent", "", ""))
            continue
        view = pipeline.ViewConfig(image_size=size, resize_size=size)
        n = min(FLAGS.pipeline_images, len(source)) // 128 * 128
        indices = np.random.default_rng(0).permutation(len(source))[:n]
        t = time.perf_counter()
        count = sum(len(b["index"]) for b in pipeline.train_batches(
            source, indices, view, 128, seed=0, num_threads=FLAGS.threads, prefetch=4))
        grain_ips = count / (time.perf_counter() - t)
        t = time.perf_counter()
        rng = np.random.default_rng(0)
        m = n // 4
        for i in indices[:m]:
            pipeline.train_view(pipeline.decode_image(source[int(i)]["image"]), view, rng)
        loop_ips = m / (time.perf_counter() - t)
        rows.append((f"{name} @ {size}px", f"{grain_ips:,.0f}", f"{loop_ips:,.0f}",
                     f"{grain_ips / loop_ips:.2f}x"))
    return rows


# --------------------------------------------------------------------------- train step


def _torch_reference(size: int, k: int, widths, fc_dim: int):
    """The reference AlexNet-BN + Sobel (ImageNet geometry, or the small variant) in PyTorch."""
    import torch
    from torch import nn

    if size == 224:
        specs = [(96, 11, 4, 2, True), (256, 5, 1, 2, True), (384, 3, 1, 1, False),
                 (384, 3, 1, 1, False), (256, 3, 1, 1, True)]
    else:
        w = widths or (64, 192, 384, 256, 256)
        specs = [(w[0], 5, 1, 2, True), (w[1], 5, 1, 2, True), (w[2], 3, 1, 1, False),
                 (w[3], 3, 1, 1, False), (w[4], 3, 1, 1, True)]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            gray = nn.Conv2d(3, 1, 1)
            gray.weight.data.fill_(1.0 / 3.0)
            gray.bias.data.zero_()
            sobel = nn.Conv2d(1, 2, 3, padding=1)
            sobel.weight.data[0, 0] = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
            sobel.weight.data[1, 0] = torch.tensor([[1.0, 2, 1], [0, 0, 0], [-1, -2, -1]])
            sobel.bias.data.zero_()
            self.sobel = nn.Sequential(gray, sobel)
            for p in self.sobel.parameters():
                p.requires_grad = False
            layers, c = [], 2
            for out, kernel, stride, pad, pool in specs:
                layers += [nn.Conv2d(c, out, kernel, stride, pad), nn.BatchNorm2d(out),
                           nn.ReLU(inplace=True)]
                if pool:
                    layers.append(nn.MaxPool2d(3, 2))
                c = out
            self.features = nn.Sequential(*layers)
            with torch.no_grad():
                flat = self.features(torch.zeros(1, 2, size, size)).numel()
            self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(flat, fc_dim),
                                            nn.ReLU(inplace=True), nn.Dropout(0.5),
                                            nn.Linear(fc_dim, fc_dim), nn.ReLU(inplace=True))
            self.top_layer = nn.Linear(fc_dim, k)

        def forward(self, x):
            x = self.features(self.sobel(x))
            return self.top_layer(self.classifier(x.flatten(1)))

    return Net()


def torch_device() -> str:
    """'cuda' when PyTorch sees a GPU (the reference's own setting there: cudnn.benchmark), else
    'cpu'."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        # TF32 for float32 matmuls as for convolutions: what XLA's default precision does on GPU,
        # so the float32 rows compare like with like.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return "cuda"
    return "cpu"


def bench_torch_step(size: int, batch: int, k: int, widths=None, fc_dim=4096,
                     dtype: str = "float32", name: str = "alexnet") -> float:
    """Images/s of the reference network's SGD step; bfloat16 = autocast (float32 parameters).
    `name` resnet18 / resnet50: the PyTorch ResNet v1.5 (+ Sobel, k-way top layer) of
    dcjax/bench/torch_resnet.py; otherwise the reference AlexNet-BN."""
    import contextlib

    import torch

    device = torch_device()
    torch.manual_seed(0)
    if name.startswith("resnet"):
        from dcjax.bench.torch_resnet import TorchResNet

        net = TorchResNet(int(name[6:8]), k, cifar_stem=False, sobel=True).to(device)
    else:
        net = _torch_reference(size, k, widths, fc_dim).to(device)
    head = net.fc if name.startswith("resnet") else net.top_layer  # torchvision's name: fc
    head_ids = {id(p) for p in head.parameters()}
    body = [p for p in net.parameters() if p.requires_grad and id(p) not in head_ids]
    opt = torch.optim.SGD(body, lr=0.05, momentum=0.9, weight_decay=1e-5)
    head_opt = torch.optim.SGD(head.parameters(), lr=0.05, weight_decay=1e-5)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, k, (batch,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    if dtype == "float32":
        cast = contextlib.nullcontext
    else:
        def cast():
            return torch.autocast(device, dtype=getattr(torch, dtype))

    def step():
        opt.zero_grad()
        head_opt.zero_grad()
        with cast():
            out = net(x)  # the ResNet reference returns every stage; the loss reads its logits
            loss = loss_fn(out["logits"] if isinstance(out, dict) else out, y)
        loss.backward()
        opt.step()
        head_opt.step()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    net.train()
    for _ in range(2):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(FLAGS.steps):
        step()
    sync()
    return FLAGS.steps * batch / (time.perf_counter() - t)


def main(argv):
    del argv
    print(f"machine: {machine()}; jax {jax.__version__}")
    if not FLAGS.skip_pipeline:
        print("\nTraining view (decode + RandomResizedCrop + flip), images/s, batch 128, "
              f"{FLAGS.threads} grain threads")
        print("| data | grain | single-thread loop | ratio |\n|---|---|---|---|")
        for row in bench_pipeline():
            print("| " + " | ".join(row) + " |")

    torch_ok, torch_version = False, "skipped"
    if not FLAGS.skip_torch:
        try:
            import torch

            torch_ok, torch_version = True, f"{torch.__version__} on {torch_device()}"
        except ImportError:
            torch_version = "not installed"
    print(f"\nTrain step (forward + backward + SGD), images/s; PyTorch {torch_version}")
    print("| model | batch | head k | dtype | BN variance | dcjax (jit) | PyTorch reference | "
          "dcjax / PyTorch |\n|---|---|---|---|---|---|---|---|")
    cases = {"alexnet": ("alexnet", 224, FLAGS.batch_224, 10000, None, 4096),
             "alexnet_small": ("alexnet_small", 32, FLAGS.batch_32, 100, None, 2048),
             "resnet50": ("resnet50", 224, FLAGS.batch_224, 10000, None, 4096)}
    for name, size, batch, k, widths, fc_dim in (cases[m] for m in FLAGS.models):
        for dtype in FLAGS.dtypes:
            ref = (bench_torch_step(size, batch, k, widths, fc_dim, dtype, name) if torch_ok
                   else float("nan"))
            for variance in FLAGS.bn_variances:
                ours = network_rates(name, size, batch, k, FLAGS.steps, widths=widths,
                                     fc_dim=fc_dim, dtype=dtype, bn_variance=variance)[0]
                ratio = f"{ours / ref:.2f}x" if torch_ok else "-"
                ref_s = f"{ref:,.1f}" if torch_ok else torch_version
                print(f"| {name} {size}px | {batch} | {k} | {dtype} | {variance} | {ours:,.1f} | "
                      f"{ref_s} | {ratio} |")


if __name__ == "__main__":
    app.run(main)
