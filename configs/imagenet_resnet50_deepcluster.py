r"""DeepCluster (v1) on a ResNet-50 with the Sobel front end on ImageNet, 224 px: mmselfsup's
`deepcluster-sobel_resnet50_8xb64-steplr-200e_in1k` setting (its reported linear top-1: 46.92 on the
pooled features, 57.71 at the best stage).

    python -m dcjax.main --config=configs/imagenet_resnet50_deepcluster.py --workdir=runs/r50_dc

The reference's values: ResNet-50 (torchvision's v1.5 layout) on the Sobel pair, k = 10,000 on the
pooled 2,048-d features after PCA to 256 (whitened, L2-normalised), k-means before every epoch,
pseudo-labels sampled uniformly over the clusters, 200 epochs, batch 512 (8 GPUs x 64), SGD lr 0.1,
momentum 0.9, weight decay 1e-5, the head without momentum and reset every epoch, extraction at
256 -> 224 centre crop. What differs from the reference: mmselfsup adds a 2-degree rotation, colour
jitter and random grayscale to the training view (dcjax's DeepCluster view is the paper's crop +
flip; with the Sobel front end colour reaches the network only as luminance), its BatchNorm is per
GPU (64 images) where dcjax's sees the whole global batch (one jit over the data-sharded batch), and
its k-means is faiss's where dcjax picks faiss on CPU hosts and its own JAX k-means on
accelerators.

Needs `imagenet2012` prepared by TFDS in ArrayRecord format (configs/imagenet_alexnet.py). Not run
at this scale here (no GPU):
`python -m dcjax.bench.train_memory --config=configs/imagenet_resnet50_deepcluster.py`
prints its memory per device and docs/scaling.md the projected epoch time. `:smoke` is the same
method and architecture family shrunk to run on the embedded digits in seconds (ResNet-18, CIFAR
stem, 32 px, k = 10), for tests.
"""

from dcjax.config_lib import base_config, digits_smoke


def get_config(arg: str | None = None):
    c = base_config()
    c.data.name = "imagenet2012"
    c.data.eval_split = "validation"
    c.data.num_workers = 8
    c.model.name = "resnet50"
    c.model.sobel = True
    c.num_epochs = 200
    c.batch_size = 512
    c.optim.lr = 0.1
    c.optim.head_lr = 0.1
    c.optim.weight_decay = 1e-5
    c.optim.head_weight_decay = 1e-5
    c.clustering.k = 10000
    c.clustering.pca_dim = 256
    c.checkpoint_every_steps = 1000
    if arg == "smoke":
        smoke(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r} (known: smoke)")
    return c


def smoke(c):
    """The embedded digits, a ResNet-18 with the CIFAR stem at 32 px, one epoch."""
    digits_smoke(c)
    c.clustering.k, c.clustering.pca_dim = 10, 16
