r"""DeepCluster with VGG16-BN (Sobel front end) on ImageNet, 224 px, k = 10,000.

    python -m dcjax.main --config=configs/imagenet_vgg16.py --workdir=runs/imagenet_vgg16

Same data preparation as configs/imagenet_alexnet.py. VGG16 costs about 15 GFLOPs a forward pass
per image against AlexNet's 0.7: plan on a multi-GPU or TPU machine.
"""

from dcjax.config_lib import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.data.name = "imagenet2012"
    c.data.eval_split = "validation"
    c.data.num_workers = 8
    c.model.name = "vgg16"
    c.checkpoint_every_steps = 1000
    return c
