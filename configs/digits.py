r"""DeepCluster on scikit-learn's 8x8 digits (the embedded default: no download).

    python -m dcjax.main --config=configs/digits.py --workdir=runs/digits

The digits are upsampled to 32 px and fed to the small AlexNet variant (narrowed for a laptop CPU).
The dataset (1,438 train + 359 test images) is imported into a TFDS ArrayRecord dataset on first use.
Expected: about 5 minutes on a 2-core CPU (291 s measured, compilation included); the final NMI of
k-means on the learned features, 0.707, beats k-means on the raw pixels with the same k (0.689) and
on the same network at its random initialisation (0.621; rerun 2026-12-02: 0.7066 / 0.6886 / 0.6214).
`--config=configs/digits.py:smoke` shrinks the same run to a few seconds for tests.
"""

from dcjax.config_lib import base_config, shrink_to_smoke


def get_config(arg: str | None = None):
    c = base_config()
    c.num_epochs = 70
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

    c.clustering.k = 50
    c.clustering.pca_dim = 64
    c.clustering.chunk_size = 2048
    # This recipe's figures (docstring) were measured with the JAX k-means and the full Pillow
    # decode; the faster defaults (clustering.backend 'auto' = faiss on CPU hosts, data.decoder
    # 'fast') change its trajectory and are not measured with it yet (one run with both: final NMI
    # 0.6735 against 0.6886 for pixels and 0.6214 at random init, 6 min 41 s, 2026-12-02).
    c.clustering.backend = "jax"
    c.data.decoder = "pil"
    c.pixel_baseline = True  # print k-means-on-pixels NMI beside the final NMI

    if arg == "smoke":
        shrink_to_smoke(c)
        c.clustering.iterations = 5
    return c
