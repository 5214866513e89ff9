r"""The paper's setup: DeepCluster, AlexNet-BN with Sobel on ImageNet (ILSVRC-2012), 224 px.

k = 10,000, 500 epochs, batch 256, SGD lr 0.05, momentum 0.9, weight decay 1e-5, PCA to 256 with
whitening, 20 k-means iterations, seed 31 (docs/design.md section 2).

    python -m dcjax.main --config=configs/imagenet_alexnet.py --workdir=runs/imagenet_alexnet

Needs `imagenet2012` prepared by TFDS in ArrayRecord format in the data dir (manual download of the
official tarballs into <data_dir>/downloads/manual). The original took 12 days for 500 epochs on one
P100; expected times on current hardware are measured by `python -m dcjax.bench.models`.
"""

from dcjax.config_lib import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.data.name = "imagenet2012"
    c.data.eval_split = "validation"
    c.data.num_workers = 8
    c.checkpoint_every_steps = 1000
    return c
