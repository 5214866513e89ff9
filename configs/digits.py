r"""DeepCluster on scikit-learn's 8x8 digits (the embedded default: no download).

    python -m dcjax.main --config=configs/digits.py --workdir=runs/digits

The digits are upsampled to 32 px and fed to the small AlexNet variant (narrowed for a laptop CPU).
The dataset (1,438 train + 359 test images) is imported into a TFDS ArrayRecord dataset on first use.
Measured on the 2-core development CPU (2026-12-02, a sampler ablation running beside it at lower
priority): 3 min 08 s wall, compilation included. NMI with the labels of each epoch's k-means (k = 50,
training split) 0.621 at epoch 0 (the random network), 0.523 at epoch 6, 0.589 at 10, 0.642 at 20,
0.669 at 29. The end-of-run comparison (k-means with k = 10 on the 359 held-out test images, mean
of 10 initialisations): DeepCluster fc7 0.7719, raw pixels 0.7271, the same network at its random
initialisation 0.6647 (+0.045 and +0.107). Other seeds, by the same function: --config.seed=32
(its epoch-30 checkpoint) 0.7594 against 0.7334 and 0.6446 (+0.026 and +0.115), so the margin over
the pixels is not 0.03 on every seed; --config.seed=33 0.7680 against 0.7255 and 0.6370 (+0.043 and
+0.131). A cosine learning rate did not lift seed 32 over 0.03. The comparison moves by up to 0.1
from one epoch to the next (docs/results.md, "Digits"). On ReLU(fc7), what the classifier reads
(printed on the next line), seeds 31 / 32 / 33 give 0.7751 / 0.7881 / 0.7928, +0.048 / +0.055 /
+0.067 over the pixels (reruns of seeds 31 and 32 took 2 min 33 s and 2 min 40 s alone on the CPU
and reproduced the fc7 figures exactly).
`--config=configs/digits.py:smoke` shrinks the same run to a few seconds for tests.
"""

from dcjax.config_lib import base_config, shrink_to_smoke


def get_config(arg: str | None = None):
    c = base_config()
    c.num_epochs = 30
    c.batch_size = 32
    c.log_every_steps = 10

    c.data.name = "digits"
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.image_size = 32
    c.data.resize_size = 32
    c.data.num_threads = 2
    # An 8x8 digit survives neither a 0.08-area crop nor a mirror image.
    c.data.crop_scale = (0.3, 1.0)
    c.data.flip = False

    c.model.name = "alexnet_small"
    c.model.widths = (32, 64, 96, 96, 64)
    c.model.fc_dim = 512

    # lr 0.1 (body and head) and 30 epochs: measured against the base 0.05 and 50-100 epochs by the
    # end-of-run comparison at every 10th epoch (docs/results.md, "Digits").
    c.optim.lr = 0.1
    c.optim.head_lr = 0.1

    c.clustering.k = 50
    c.clustering.pca_dim = 64
    c.clustering.chunk_size = 2048
    # This recipe's figures (docstring) were measured with the JAX k-means and the full Pillow
    # decode; the faster defaults (clustering.backend 'auto' = faiss on CPU hosts, data.decoder
    # 'fast') change its trajectory and are not measured with it yet.
    c.clustering.backend = "jax"
    c.data.decoder = "pil"
    c.pixel_baseline = True  # the end-of-run comparison includes k-means on the raw pixels

    if arg == "smoke":
        shrink_to_smoke(c)
        c.clustering.iterations = 5
    return c
