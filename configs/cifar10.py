r"""DeepCluster on CIFAR-10 (50,000 train + 10,000 test, 32 px), small AlexNet with Sobel.

Import once from the JPEG tarball shipped beside the project:

    python -m dcjax.data.prepare --source=../shared/data/cifar10-jpg.tar.gz --name=cifar10_jpg
    python -m dcjax.main --config=configs/cifar10.py --workdir=runs/cifar10

`:cpu` is the same method narrowed for a 2-core CPU: about 110 s an epoch there (22 min 21 s for its
12 epochs, measured; docs/results.md). The full config takes about 400 s an epoch on that CPU
(measured: 310-330 s of training, 70-75 s of extraction, 2.5 s of PCA and k-means), some 3 h 20 min
for its 30 epochs; docs/evaluation.md evaluates it after 20. `:smoke` shrinks it for a quick check.
"""

from dcjax.config_lib import base_config, shrink_to_smoke


def get_config(arg: str | None = None):
    c = base_config()
    c.num_epochs = 30
    c.batch_size = 128

    c.data.name = "cifar10_jpg"
    c.data.eval_split = "test"
    c.data.num_threads = 2  # the 2-core development machine; raise on bigger hosts
    c.data.image_size = 32
    c.data.resize_size = 32

    c.model.name = "alexnet_small"
    c.model.fc_dim = 2048

    c.clustering.k = 100
    c.clustering.pca_dim = 128
    # This recipe's figures (docstring) were measured with the JAX k-means and the full Pillow
    # decode; the faster defaults (clustering.backend 'auto' = faiss on CPU hosts, data.decoder
    # 'fast') change its trajectory and are not measured with it yet.
    c.clustering.backend = "jax"
    c.data.decoder = "pil"

    if arg == "cpu":
        c.num_epochs = 12
        c.model.widths = (32, 64, 128, 128, 64)
        c.model.fc_dim = 512
        c.clustering.pca_dim = 64
        c.data.crop_scale = (0.2, 1.0)
    elif arg == "smoke":
        shrink_to_smoke(c)
    return c
