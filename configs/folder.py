r"""DeepCluster on your own images: any dataset imported from a folder, labelled or not.

    python -m dcjax.data.prepare --source=~/photos --name=photos
    python -m dcjax.main --config=configs/folder.py:photos --workdir=runs/photos

The argument is the dataset's name, optionally followed by a variant: `photos,alexnet224` (the
reference AlexNet-BN geometry at 224 px, for a GPU and tens of thousands of images or more),
`photos,resnet18` (ResNet-18 with Sobel at the default 64 px: the stem leaves 16x16, res5 2x2),
`photos,resnet50` (ResNet-50 with Sobel at 224 px, the geometry of mmselfsup's DeepCluster ResNet-50
and of converted torchvision / swav ResNet-50s: `--config.model.init=DIR` from `python -m
dcjax.convert`, with `--config.model.sobel=False` for an RGB network) or `photos,smoke` (a few
seconds, for tests). `photos,init=DIR` (alone or after a variant) starts from a trained network
instead of a random one and takes its architecture and geometry: DIR is a dcjax run, an `export
--init` folder or a network from `python -m dcjax.convert` (`--fetch=NAME` for the released ones;
an AlexNet / VGG16 / ResNet-50 release selects the 224 px settings). The two ResNet variants have
not been trained to completion on a folder yet: `digits,resnet18` trained at 19.5 images a second
on the 2-core development CPU (about 100 s an epoch of 1,438 images with extraction, 2026-12-06),
and `resnet50` is sized for a GPU. Every field stays overridable (`--config.num_epochs=60`,
`--config.clustering.k=500`, ...).

Defaults, for a few thousand to a few million photos:
  * k = 0: one cluster per 100 images, at least 10 and at most 10,000 (config_lib.auto_k; the
    paper's 10,000 for ImageNet's 1.28M images);
  * the small AlexNet with Sobel at 64 px (centre view: shorter side 73, the reference's 224/256
    ratio), narrowed for a CPU: 504-568 training images a second on the 2-core development CPU
    (AMD EPYC with AVX-512, alone on it, 2026-12-06: 10,000 images, 23-25 s an epoch of which 4 s
    extraction; the 270 a second quoted before was measured beside test suites on an Intel Xeon);
    crops of 20-100% of the image, horizontal flips;
  * 30 epochs, batch 128, the reference optimiser (SGD lr 0.05, momentum 0.9);
  * a 'validation' split (`prepare --holdout=0.1`), else a 'val' or 'test' split the folder had,
    is the held-out split of `python -m dcjax.evaluate` and of the end-of-run comparison when the
    images are labelled (the run prints which one it uses); training needs neither labels nor a
    held-out split.

Measured on the 2-core development CPU (docs/own_images.md): the 9,469 Imagenette training images
as a folder of photos (`prepare --layout=class`, so that NMI against the 10 classes can be
reported; labels never reach training), k = 94: 30 epochs in 23 min 21 s wall on a machine shared
with test runs. NMI of each epoch's clustering against the classes rose from 0.070 (epoch 0, the
random initialisation) to 0.150 (epoch 29); the trained network's clustering (today's summary field
final_clusters_nmi_labels) scores 0.148, against
0.119 for k-means on the raw pixels (same k). Today's end-of-run comparison on that run's final
checkpoint (`python -m dcjax.evaluate --protocol=comparison`: k = the 10 classes, fc7
L2-normalised, mean of 10, on the training images as there is no held-out split): DeepCluster
0.1301, random init 0.0441, raw pixels 0.0894 (on ReLU(fc7), the same command since commit
1e00a2e: 0.1308 and 0.0466).

Measured again on 2026-12-06 (2-core AMD EPYC with AVX-512, alone on it, seed 31; docs/own_images.md
section 2): CIFAR-10's 10,000 test images as a folder (`--layout=class` for the measurement), k =
100. From scratch, 30 epochs in 13 min 30 s (23-25 s an epoch): NMI of each epoch's clustering
with the classes 0.074 (random) -> 0.103 (epoch 10) -> 0.115 (20) -> 0.140 (29), the trained
network's clustering 0.1334 against 0.1213 for k-means on the pixels (same k); the end-of-run
comparison (k = 10, mean of 10, on these images) DeepCluster 0.1092, random init 0.0460, raw pixels
0.0851. `cifar_test_folder,init=RUN` from the 60-epoch `imagenette.py:cpu` network, 5 epochs in
3 min 0 s: 0.137 (the network as it came) -> 0.144, its clustering 0.1520, comparison 0.1154; the
same network without training (`export --init`, 11 s): 0.1343 and 0.0955.
"""

import os

from dcjax.config_lib import base_config, network_fields, set_fields, shrink_to_smoke

VARIANTS = ("alexnet224", "resnet18", "resnet50", "smoke")


def parse(arg: str | None) -> tuple[str, str, str]:
    """(dataset name, variant or '', init or '') of `NAME[,VARIANT][,init=DIR]`."""
    name, *rest = (arg or "").split(",")
    variant, init = "", ""
    for part in rest:
        if part.startswith("init="):
            init = part.removeprefix("init=")
            if not init:
                raise ValueError(f"configs/folder.py:{arg}: init= needs a run or network folder")
        elif part in VARIANTS and not variant:
            variant = part
        else:
            raise ValueError(f"configs/folder.py:{arg}: {part!r} is not a variant "
                             f"({', '.join(VARIANTS)}) nor init=DIR")
    if not name:
        raise ValueError("configs/folder.py needs the dataset's name: --config=configs/folder.py:NAME")
    return name, variant, init


def get_config(arg: str | None = None):
    name, variant, init = parse(arg)
    if init and not variant:
        # A converted release brings its architecture's geometry and optimiser sizes.
        arch = network_fields(init).get("model.name", "")
        variant = {"alexnet": "alexnet224", "vgg16": "alexnet224",
                   "resnet50": "resnet50"}.get(arch, "")
    c = base_config()
    c.num_epochs = 30
    c.batch_size = 128
    c.log_every_steps = 20

    c.data.name = name
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.num_threads = min(8, os.cpu_count() or 1)
    c.data.image_size = 64
    c.data.resize_size = 73
    c.data.crop_scale = (0.2, 1.0)
    c.eval.crop_scale = (0.2, 1.0)

    c.model.name = "alexnet_small"
    c.model.widths = (32, 64, 128, 128, 64)
    c.model.fc_dim = 512

    c.clustering.k = 0  # config_lib.auto_k
    c.clustering.pca_dim = 64
    # This recipe's figures (docstring) were measured with the JAX k-means and the full Pillow
    # decode; the faster defaults (clustering.backend 'auto' = faiss on CPU hosts, data.decoder
    # 'fast') change its trajectory and are not measured with it yet.
    c.clustering.backend = "jax"
    c.data.decoder = "pil"
    c.pixel_baseline = True  # printed at the end when the images are labelled

    if variant in ("alexnet224", "resnet50"):  # the ImageNet geometry of the reference networks
        c.batch_size = 256
        c.data.image_size = 224
        c.data.resize_size = 256
        c.data.crop_scale = (0.08, 1.0)
        c.eval.crop_scale = (0.08, 1.0)
        c.model.name = "alexnet" if variant == "alexnet224" else "resnet50"
        c.model.widths = ()
        c.model.fc_dim = 4096
        c.clustering.pca_dim = 256
    elif variant == "resnet18":
        c.model.name = "resnet18"
        c.model.widths = ()
    elif variant == "smoke":
        shrink_to_smoke(c)
        c.batch_size = 16
        c.log_every_steps = 2
        c.data.image_size = 32
        c.data.resize_size = 36
        c.clustering.k = 4
        c.clustering.pca_dim = 8
        c.clustering.iterations = 5
        c.pixel_baseline = False
    if init:
        set_fields(c, network_fields(init))
        c.model.init = init
    return c
