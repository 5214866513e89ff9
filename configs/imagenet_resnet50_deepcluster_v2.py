r"""DeepCluster-v2 on a ResNet-50 on ImageNet: swav's `scripts/deepclusterv2_800ep_pretrain.sh`
(its reported linear top-1: 75.2).

    python -m dcjax.main --config=configs/imagenet_resnet50_deepcluster_v2.py --workdir=runs/r50_dcv2

The reference's values (docs/design.md, "DeepCluster-v2"; dcjax/methods/deepcluster_v2.py): ResNet-50
without Sobel, projection 2048 -> 2048 -> 128 (BatchNorm, ReLU) L2-normalised, three heads of 3,000
prototypes, temperature 0.1, multi-crop 2 x 224 (scale 0.14-1) + 6 x 96 (scale 0.05-0.14), the two
224 px crops filling the memory bank, 10 spherical k-means iterations per head at each epoch start,
800 epochs, batch 4,096 (64 GPUs x 64), LARS (trust 0.001, momentum 0.9, weight decay 1e-6), base lr
4.8 with 10 warm-up epochs from 0.3 then a cosine to 0.0048, prototypes frozen for 300,000 steps
(longer than the run: they stay the centroids). What differs from the reference: swav's crops also
get colour distortion (jitter 0.8, grayscale 0.2) and Gaussian blur, which dcjax's pipeline does not
have yet; its BatchNorm is synchronised over groups of 8 GPUs (apex), dcjax's over the whole
global batch (the train step is one jit over the data-sharded batch, dcjax/step.py).

Needs `imagenet2012` prepared by TFDS in ArrayRecord format (configs/imagenet_alexnet.py). Not run
at this scale here (no GPU):
`python -m dcjax.bench.train_memory --config=configs/imagenet_resnet50_deepcluster_v2.py`
prints its memory per device (bank, prototypes, parameters, activations) and docs/scaling.md the
projected epoch time. `:smoke` is the same method and architecture family shrunk to run on the
embedded digits (ResNet-18 with the CIFAR stem, 2 x 32 + 2 x 28 px crops, heads of 20 and 30, one
epoch), for tests.
"""

from dcjax.config_lib import base_config, digits_smoke


def get_config(arg: str | None = None):
    c = base_config()
    c.method = "deepcluster_v2"
    c.data.name = "imagenet2012"
    c.data.eval_split = "validation"
    c.data.num_workers = 8
    c.data.views = ((2, 224, (0.14, 1.0)), (6, 96, (0.05, 0.14)))
    c.model.name = "resnet50"
    c.model.sobel = False
    c.num_epochs = 800
    c.batch_size = 4096
    c.checkpoint_every_steps = 500
    v = c.deepcluster_v2  # the defaults are the reference's; named here to be read in one place
    v.prototypes = (3000, 3000, 3000)
    v.temperature = 0.1
    v.feat_dim, v.hidden_dim = 128, 2048
    v.crops_for_assign = (0, 1)
    v.kmeans_iterations = 10
    v.freeze_prototypes_niters = 300_000
    v.lr, v.final_lr, v.start_warmup = 4.8, 0.0048, 0.3
    v.warmup_epochs, v.lr_epochs = 10, 800
    v.weight_decay, v.momentum, v.trust_coefficient = 1e-6, 0.9, 0.001
    if arg == "smoke":
        smoke(c)
    elif arg:
        raise ValueError(f"unknown variant {arg!r} (known: smoke)")
    return c


def smoke(c):
    """The embedded digits, a ResNet-18 with the CIFAR stem, small multi-crop, one epoch."""
    digits_smoke(c)
    c.data.views = ((2, 32, (0.3, 1.0)), (2, 28, (0.1, 0.3)))
    v = c.deepcluster_v2
    v.prototypes, v.hidden_dim, v.feat_dim = (20, 30), 64, 32
    v.warmup_epochs, v.lr_epochs, v.freeze_prototypes_niters = 1, 2, 20
    v.lr, v.final_lr, v.start_warmup = 0.3, 0.003, 0.03
