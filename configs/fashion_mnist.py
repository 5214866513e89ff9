r"""DeepCluster on Fashion-MNIST (28x28 grey, 60,000 train + 10,000 test), small AlexNet at 28 px.

Import once (Debian's dataset-fashion-mnist package gives the IDX files):

    apt-get install -y dataset-fashion-mnist
    python -m dcjax.data.prepare --source=/usr/share/datasets/fashion-mnist --name=fashion_mnist_idx \
        --class_names=T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle_boot
    python -m dcjax.main --config=configs/fashion_mnist.py --workdir=runs/fashion_mnist

Expected time: not yet measured (its network is wider than configs/cifar10.py:cpu, which takes
about 110 s per epoch of 50,000 images on a 2-core CPU). `:smoke` shrinks it for a quick check.
"""

from dcjax.config_lib import base_config, shrink_to_smoke


def get_config(arg: str | None = None):
    c = base_config()
    c.num_epochs = 20
    c.batch_size = 128

    c.data.name = "fashion_mnist_idx"
    c.data.eval_split = "test"
    c.data.num_threads = 2  # the 2-core development machine; raise on bigger hosts
    c.data.image_size = 28
    c.data.resize_size = 28

    c.model.name = "alexnet_small"
    c.model.widths = (64, 128, 256, 256, 128)
    c.model.fc_dim = 2048

    c.clustering.k = 100
    c.clustering.pca_dim = 128
    # A 28 px garment keeps its class in a 0.3-area crop; 0.08 (the reference's, for 224 px photos)
    # often leaves a few grey pixels. Mirror images stay garments.
    c.data.crop_scale = (0.3, 1.0)
    c.eval.crop_scale = (0.3, 1.0)
    c.pixel_baseline = True  # the end-of-run comparison includes k-means on the raw pixels

    if arg == "cpu":
        # Sized for a 2-core CPU like configs/cifar10.py:cpu.
        c.num_epochs = 10
        c.model.widths = (32, 64, 128, 128, 64)
        c.model.fc_dim = 512
        c.clustering.pca_dim = 64
    elif arg == "smoke":
        shrink_to_smoke(c)
    return c
