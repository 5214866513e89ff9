"""The reference configuration and its validation.

`base_config()` holds the paper's / official code's defaults (docs/design.md section 2); files in
`configs/` start from it and change what their dataset needs. `validate_fields(config, ...)`
checks the values no component owns; `dcjax.validation.validate` runs it with every component's own
checks (models, clustering, data, view cache, evaluation) before any work, and stops a bad value
with one sentence naming the field. This module imports no other dcjax module.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import ml_collections

LR_SCHEDULES = ("constant", "cosine")  # config.optim.lr_schedule
# config.eval.protocol='reference': the official eval_linear.py as its shipped eval_linear.sh runs it
# (90 epochs, SGD lr 0.01 momentum 0.9, weight decay 10^-7 with lr / sqrt(1 + lr wd t), batch 256,
# RandomCrop of the resized centre square + flip, ten-crop test every epoch). docs/evaluation.md.
REFERENCE_PROBE = {"linear_epochs": 90, "linear_lr": 0.01, "linear_momentum": 0.9,
                   "linear_weight_decay": 1e-7, "linear_schedule": "reference",
                   "linear_views": "translate", "linear_normalize": False, "batch_size": 256,
                   "linear_test_views": "ten_crop", "linear_test_every": 1}


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field."""


# Resume policy (docs/reliability.md): once a workdir has a checkpoint, the fields of FROZEN give
# its saved state its meaning and may not change; those of RESUMABLE only change how the run goes
# on and may (the change is logged). Every config field is in exactly one (a test checks).
FROZEN = (
    "method", "seed", "batch_size", "reassign",
    "data.name", "data.train_split", "data.image_size", "data.resize_size", "data.crop_scale",
    "data.flip", "data.views",
    "model.name", "model.sobel", "model.fc_dim", "model.widths", "model.dropout", "model.dtype",
    "model.init", "model.bn_variance",
    "clustering.k", "clustering.pca_dim", "clustering.iterations", "clustering.sampler",
    "optim.lr", "optim.momentum", "optim.weight_decay", "optim.head_lr", "optim.head_weight_decay",
    "optim.lr_schedule", "optim.lr_decay_epochs",
)
RESUMABLE = (
    "num_epochs", "checkpoint_every_steps", "keep_checkpoints", "log_every_steps",
    "pixel_baseline", "visualize_every_epochs", "eval_every_epochs",
    "data.data_dir", "data.eval_split", "data.num_threads", "data.num_workers", "data.prefetch",
    "data.view_cache", "data.view_cache_dir", "data.view_cache_share", "data.decoder",
    "data.loader",
    "clustering.backend", "clustering.chunk_size", "clustering.precision",
    "eval.batch_size", "eval.linear_epochs", "eval.linear_lr", "eval.linear_schedule",
    "eval.linear_momentum", "eval.linear_weight_decay", "eval.linear_normalize", "eval.crop_scale",
    "eval.linear_views", "eval.probe_dim", "eval.pixel_pca_dim", "eval.knn_k", "eval.knn_weights",
    "eval.linear_test_views", "eval.linear_test_every", "eval.protocol",
)
RESUMABLE_PREFIXES = ("evals.",)  # the evaluators, whatever their names
FROZEN_PREFIXES = ("deepcluster_v2.",)  # DeepCluster-v2's method settings


def is_frozen(field: str) -> bool:
    """Whether `field` (a dotted path) is listed frozen (FROZEN, FROZEN_PREFIXES)."""
    return field in FROZEN or field.startswith(FROZEN_PREFIXES)


def is_resumable(field: str) -> bool:
    """Whether `field` (a dotted path) may change on a resumed run."""
    return field in RESUMABLE or field.startswith(RESUMABLE_PREFIXES)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # The training method (dcjax/methods/): 'deepcluster' (DeepCluster v1, the paper's).
    c.method = "deepcluster"
    c.seed = 31
    c.num_epochs = 500
    c.batch_size = 256  # global, over all devices and hosts
    c.reassign = 1  # epochs between re-clusterings
    c.checkpoint_every_steps = 0  # 0: checkpoint at the end of each epoch only
    c.keep_checkpoints = 3
    c.log_every_steps = 100
    c.pixel_baseline = False  # at the end, k-means NMI of raw pixels (same k) for comparison
    c.visualize_every_epochs = 10  # cluster grid + conv1 filters (plots/); also for the final net

    c.data = ml_collections.ConfigDict()
    c.data.name = "imagenet2012"
    c.data.data_dir = ""  # '' -> $DCJAX_DATA_DIR or ~/tensorflow_datasets
    c.data.train_split = "train"
    c.data.eval_split = "validation"
    c.data.image_size = 224
    c.data.resize_size = 256
    c.data.crop_scale = (0.08, 1.0)  # RandomResizedCrop area fraction (the reference's)
    c.data.flip = True
    # Multi-crop: the training views of each record as (count, image_size, (min_scale, max_scale))
    # groups, e.g. ((2, 224, (0.14, 1.0)), (6, 96, (0.05, 0.14))); () = one view of image_size and
    # crop_scale (data.pipeline.view_configs). For methods that train on several views.
    c.data.views = ()
    c.data.num_threads = 8  # grain threads per process (each builds whole batches)
    c.data.num_workers = 0  # grain worker processes per host (0: threads only)
    c.data.prefetch = 8  # batches
    # The training view's decoding: 'fast' (JPEGs decoded at the resolution the crop needs, DCT
    # scaling; same crops, pixels equal or within resampling), 'opencv' (only the crop's rows and
    # columns decoded, at a DCT scale that leaves at most a 1.5x shrink, resampled by OpenCV's
    # bilinear warp) or 'pil' (full decode, Pillow's resampling); docs/design.md, "Fast training
    # view"; docs/benchmarks.md.
    c.data.decoder = "opencv"
    # The training view's loader: 'grain' (host threads / processes) or 'dali' (NVIDIA DALI: decode,
    # crop, resize and flip on the GPU; same crops and flips; data/dali_loader.py).
    c.data.loader = "grain"
    # The deterministic view, decoded once and read back at every later extraction (dcjax/view_cache.py):
    # 'auto' (device memory, else host memory, else disk), 'device', 'host', 'disk' or 'off'.
    c.data.view_cache = "auto"
    c.data.view_cache_dir = ""  # the disk cache's folder; '' -> WORKDIR/view_cache
    c.data.view_cache_share = 0.25  # at most this share of device (or host) memory

    c.model = ml_collections.ConfigDict()
    c.model.name = "alexnet"
    c.model.sobel = True
    c.model.fc_dim = 4096
    c.model.widths = ()  # alexnet_small only; () keeps its default widths
    c.model.dropout = 0.5
    c.model.dtype = "float32"
    # '' or a folder written by `python -m dcjax.convert --from_torch` (e.g. the official released
    # network): training starts from its weights and BatchNorm statistics instead of random ones.
    c.model.init = ""
    # BatchNorm's batch variance in training: 'fast' (E[x^2] - E[x]^2, Flax's default) or 'two_pass'
    # (PyTorch's formula: a float32 train step then matches PyTorch's to ~1e-6, tests/test_interop.py).
    c.model.bn_variance = "fast"

    c.clustering = ml_collections.ConfigDict()
    c.clustering.k = 10000  # 0: from the number of images (auto_k)
    c.clustering.pca_dim = 256
    c.clustering.iterations = 20
    # 'auto': faiss on CPU-only hosts (faster there), the JAX k-means on accelerators and when the
    # features are sharded across processes (clustering.choose_backend); or 'jax' / 'faiss'.
    c.clustering.backend = "auto"
    # 'uniform' (the paper: every cluster equally), 'reference' (what the official code feeds:
    # images in proportion to cluster sizes, with repeats) or 'natural' (a shuffle), sampler.py.
    c.clustering.sampler = "uniform"
    c.clustering.chunk_size = 8192  # rows scored against all k centroids at once
    # JAX k-means distance matmul: 'highest' (float32), or 'tf32_3x' / 'bf16_3x' / 'bf16_6x' (float32
    # operands split over tensor-core passes; faster on GPUs, see docs/benchmarks.md), or
    # 'exact_fast' (one bfloat16 pass, float32 re-scoring of the rows it leaves undecided: the
    # same assignment as 'highest'; for accelerators, not yet measured on one).
    c.clustering.precision = "highest"

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 0.05
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-5
    c.optim.head_lr = 0.05
    c.optim.head_weight_decay = 1e-5
    # 'constant' (the reference) or 'cosine': the body's learning rate follows half a cosine from lr
    # to 0 over the first lr_decay_epochs epochs' steps and stays at 0 after; the head, new every
    # epoch, keeps head_lr (step.lr_scale).
    c.optim.lr_schedule = "constant"
    c.optim.lr_decay_epochs = 0  # 'cosine' only: > 0; frozen, so a longer run keeps the same decay

    # DeepCluster-v2 (config.method='deepcluster_v2', dcjax/methods/deepcluster_v2.py): the
    # reference's settings (swav's scripts/deepclusterv2_800ep_pretrain.sh).
    c.deepcluster_v2 = ml_collections.ConfigDict()
    c.deepcluster_v2.prototypes = (3000, 3000, 3000)  # k per head
    c.deepcluster_v2.temperature = 0.1
    c.deepcluster_v2.feat_dim = 128  # the projection's output
    c.deepcluster_v2.hidden_dim = 2048  # the projection's hidden layer
    c.deepcluster_v2.crops_for_assign = (0, 1)  # the views whose embeddings fill the memory bank
    c.deepcluster_v2.kmeans_iterations = 10
    c.deepcluster_v2.freeze_prototypes_niters = 300_000  # steps the prototypes stay as clustered
    c.deepcluster_v2.lr = 4.8  # LARS, base rate of the warm-up + cosine schedule
    c.deepcluster_v2.final_lr = 0.0048
    c.deepcluster_v2.start_warmup = 0.3
    c.deepcluster_v2.warmup_epochs = 10
    c.deepcluster_v2.lr_epochs = 800  # the schedule's length (frozen; num_epochs may grow)
    c.deepcluster_v2.weight_decay = 1e-6
    c.deepcluster_v2.momentum = 0.9
    c.deepcluster_v2.trust_coefficient = 0.001

    # Evaluation (python -m dcjax.evaluate; docs/design.md section 2, "Linear probe protocol").
    c.eval_every_epochs = 0  # > 0: run config.evals on eval_split every this many epochs
    # The evaluators (dcjax/evaluate/evaluators.py): name -> type ('knn', 'linear', 'clustering'),
    # every_epochs (during training; 0: every eval_every_epochs) and features ('network' or
    # 'pixels'); their values go to metrics.jsonl as <name>_<value>. Add more in a config file:
    # c.evals.clustering = dict(type="clustering", every_epochs=5, features="network").
    c.evals = ml_collections.ConfigDict(
        {"knn": {"type": "knn", "every_epochs": 0, "features": "network"}})
    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 256  # global
    c.eval.linear_epochs = 10
    c.eval.linear_lr = 0.01  # SGD momentum 0.9
    # 'cosine': decayed to 0 over the probe's epochs; 'reference': eval_linear.py's
    # lr / sqrt(1 + lr * weight_decay * step), nearly constant
    c.eval.linear_schedule = "cosine"
    c.eval.linear_momentum = 0.9
    c.eval.linear_weight_decay = 1e-4
    c.eval.linear_normalize = False  # True: standardise each pooled feature (needs a lower lr)
    c.eval.crop_scale = (0.08, 1.0)  # the probe's training views; flip follows data.flip
    # 'augmented': the paper's probe, a forward pass of a new crop + flip view at every step
    # (RandomResizedCrop with eval.crop_scale); 'translate': the same with the reference
    # eval_linear.py's views, the centre view shifted by up to 16/224 of its side, + flip;
    # 'center': each image's centre-view features computed once and cached (float16), the classifiers
    # trained on those (a fast diagnostic: one forward pass per split instead of one per probe epoch)
    c.eval.linear_views = "augmented"
    # 'center': top-1 on each held-out image's centre view; 'ten_crop': the softmax averaged over
    # its four corner and centre crops and their mirror images (the reference's --tencrops)
    c.eval.linear_test_views = "center"
    # Test the probes every this many epochs as well as after the last (0: after the last only);
    # the result records each tested epoch's top-1 and the best (selected on the test split).
    c.eval.linear_test_every = 0
    # 'dcjax': the eval.linear_* fields as set. 'reference': REFERENCE_PROBE's values (the official
    # eval_linear.py) for every one of those fields not given on the command line.
    c.eval.protocol = "dcjax"
    c.eval.probe_dim = 9216  # pooled size per conv layer for geometries without the paper's table
    c.eval.pixel_pca_dim = 64  # --features=pixels: raw pixels reduced to this many components
    c.eval.knn_k = 20
    c.eval.knn_weights = "distance"  # 'distance' (1 / cosine distance) or 'uniform'
    return c


def shrink_to_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The `:smoke` variant of a config file: one epoch of a tiny small-AlexNet, k = 10, PCA to 16,
    for tests and a first check (the data, geometry and optimiser stay the file's)."""
    c.num_epochs = 1
    c.model.widths = (8, 16, 16, 16, 16)
    c.model.fc_dim = 64
    c.clustering.k = 10
    c.clustering.pca_dim = 16
    return c


def digits_smoke(c: ml_collections.ConfigDict, model: str = "resnet18_cifar") -> None:
    """A large config's `:smoke` variant on the embedded digits at 32 px: the same method on a
    small network of the same family, one epoch, for tests and a first check."""
    c.data.name = "digits"
    c.data.train_split, c.data.eval_split = "train", "test"
    c.data.image_size = c.data.resize_size = 32
    c.data.num_workers, c.data.num_threads = 0, 2
    c.data.crop_scale = (0.3, 1.0)
    c.data.flip = False
    c.model.name = model
    c.num_epochs, c.batch_size = 1, 32
    c.checkpoint_every_steps = 0
    c.log_every_steps = 10


def network_fields(init: str) -> dict[str, Any]:
    """The config fields ('model.name', 'data.image_size', ...) that make a model fit the network
    `init` (a dcjax run, an `export --init` folder or a `dcjax.convert` folder), read from its JSON
    files only: what a config file sets to fine-tune from it (configs/folder.py:NAME,init=DIR)."""
    import json

    path = Path(init).expanduser()
    if (path / "config.json").exists():  # a run or an export --init folder: its own model
        saved = json.loads((path / "config.json").read_text())
        fields = {f"model.{k}": as_tuples(v) for k, v in saved.get("model", {}).items()
                  if k != "init"}
        fields.update({f"data.{k}": saved["data"][k] for k in ("image_size", "resize_size")
                       if k in saved.get("data", {})})
        return fields
    if (path / "network.json").exists():  # a converted release: its architecture's geometry
        info = json.loads((path / "network.json").read_text())
        arch = str(info.get("arch", ""))
        fields = {"model.name": arch, "model.widths": (), "model.sobel": bool(info.get("sobel", True))}
        if arch in ("alexnet", "vgg16") and info.get("fc_dim"):
            fields["model.fc_dim"] = int(info["fc_dim"])
        small = arch.endswith("_cifar")
        fields["data.image_size"], fields["data.resize_size"] = (32, 36) if small else (224, 256)
        return fields
    raise ConfigError(f"init={init} is neither a dcjax run (config.json) nor a folder written by "
                      f"python -m dcjax.convert or export --init (network.npz, network.json)")


def as_tuples(value: Any) -> Any:
    """JSON lists, at any depth, as tuples (how config files write them)."""
    return tuple(as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def set_fields(c: ml_collections.ConfigDict, fields: dict[str, Any]) -> None:
    """Sets dotted fields ('model.name': ...) that exist in `c`; unknown ones are skipped."""
    for dotted, value in fields.items():
        section, _, key = dotted.rpartition(".")
        node = c
        for part in section.split(".") if section else []:
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if isinstance(node, ml_collections.ConfigDict) and key in node:
            node[key] = value


def flat_fields(config: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted path: value} of every leaf of a ConfigDict or of its JSON dict (tuples as lists)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, (dict, ml_collections.ConfigDict)):
            out.update(flat_fields(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    """Tuples and lists, at any depth, as lists (how a config's JSON holds them)."""
    return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def resume_changes(saved: dict, requested: ml_collections.ConfigDict) -> tuple[list, list]:
    """(frozen, resumable) lists of (field, saved value, requested value) that differ between a
    run's saved config (its config.json) and the requested one. A field the saved config lacks (a
    run from an older dcjax) counts as its base_config default."""
    old, new = flat_fields(saved), flat_fields(requested)
    default = flat_fields(base_config())
    frozen, resumable = [], []
    for field in sorted(set(new) | set(old)):
        a = old.get(field, default.get(field))
        b = new.get(field, default.get(field))
        if a != b:
            (resumable if is_resumable(field) else frozen).append((field, a, b))
    return frozen, resumable


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def positive_int(config: ml_collections.ConfigDict, path: str, minimum: int = 1) -> None:
    value = config
    for key in path.split("."):
        value = value[key]
    require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
             f"config.{path}={value!r} must be an integer >= {minimum}")


def validate_fields(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
    """Checks the values that need no data and that no component owns (the run's sizes, the data's
    geometry, the optimiser, k); raises ConfigError naming the first bad field."""
    d, cl, o = config.data, config.clustering, config.optim
    require(d.resize_size >= d.image_size,
            f"config.data.resize_size={d.resize_size} is smaller than "
            f"config.data.image_size={d.image_size}")
    lo_s, hi_s = tuple(d.crop_scale)
    require(0.0 < lo_s <= hi_s <= 1.0,
            f"config.data.crop_scale={tuple(d.crop_scale)} must satisfy 0 < min <= max <= 1")
    require(bool(d.name), "config.data.name is empty")
    if d.data_dir:
        require(Path(d.data_dir).expanduser().is_dir(),
                f"config.data.data_dir={d.data_dir!r} is not a directory")
    for path in ("num_epochs", "batch_size", "reassign", "keep_checkpoints", "log_every_steps",
                 "model.fc_dim", "clustering.pca_dim", "clustering.iterations",
                 "clustering.chunk_size", "data.num_threads", "data.prefetch"):
        positive_int(config, path)
    positive_int(config, "checkpoint_every_steps", minimum=0)
    positive_int(config, "data.num_workers", minimum=0)
    require(config.batch_size % num_devices == 0,
            f"config.batch_size={config.batch_size} is not divisible by the {num_devices} devices")
    for key in ("lr", "head_lr"):
        require(finite(o[key]) and o[key] > 0,
                f"config.optim.{key}={o[key]} must be a positive finite number")
    for key in ("weight_decay", "head_weight_decay"):
        require(finite(o[key]) and o[key] >= 0,
                f"config.optim.{key}={o[key]} must be a non-negative finite number")
    require(o.lr_schedule in LR_SCHEDULES,
            f"config.optim.lr_schedule={o.lr_schedule!r} must be one of {LR_SCHEDULES}")
    require(isinstance(o.lr_decay_epochs, int) and not isinstance(o.lr_decay_epochs, bool)
            and (o.lr_decay_epochs > 0 if o.lr_schedule == "cosine" else o.lr_decay_epochs >= 0),
            f"config.optim.lr_decay_epochs={o.lr_decay_epochs!r} must be a positive integer with "
            f"lr_schedule={o.lr_schedule!r}" if o.lr_schedule == "cosine" else
            f"config.optim.lr_decay_epochs={o.lr_decay_epochs!r} must be a non-negative integer")
    require(finite(o.momentum) and 0 <= o.momentum < 1,
            f"config.optim.momentum={o.momentum} must be in [0, 1)")
    require(isinstance(cl.k, int) and not isinstance(cl.k, bool) and cl.k >= 0,
            f"config.clustering.k={cl.k!r} must be an integer >= 2, or 0 for auto_k")
    require(cl.k != 1, f"config.clustering.k={cl.k}: one cluster gives every image the same "
            "pseudo-label, so there is nothing to learn; use k >= 2 (or 0 for auto_k)")


def apply_eval_protocol(config: ml_collections.ConfigDict, overrides: dict | None = None) -> None:
    """With config.eval.protocol='reference', sets the REFERENCE_PROBE fields in place, except those
    named in `overrides` (the command line's `--config.eval.x=...`, as 'eval.x' keys)."""
    if config.eval.get("protocol") != "reference":
        return
    given = set(overrides or ())
    for key, value in REFERENCE_PROBE.items():
        if f"eval.{key}" not in given:
            config.eval[key] = value


def auto_k(num_images: int) -> int:
    """k for `config.clustering.k = 0`: one cluster per 100 images, at least 10, at most 10,000 (the
    paper's k for ImageNet's 1.28M images), and never more than half the images."""
    return max(2, min(max(10, num_images // 100), 10_000, num_images // 2))


# The held-out split names `dcjax.data.prepare` writes (--holdout, or a source's own split).
EVAL_SPLIT_NAMES = ("validation", "val", "test")


def resolve_auto(config: ml_collections.ConfigDict, split_sizes: dict[str, int]) -> list[str]:
    """Fills the fields whose value comes from the data, in place, so that the run's saved config
    holds the value used: `clustering.k = 0` -> auto_k; a `data.eval_split` the dataset lacks ->
    the dataset's held-out split under another of EVAL_SPLIT_NAMES. Returns a line per change."""
    notes = []
    d = config.data
    if config.clustering.k == 0 and d.train_split in split_sizes:
        with config.unlocked():
            config.clustering.k = auto_k(split_sizes[d.train_split])
    if d.eval_split and d.eval_split not in split_sizes:
        other = next((s for s in EVAL_SPLIT_NAMES if s in split_sizes and s != d.train_split), None)
        if other is not None:
            notes.append(f"held-out split: {other!r} (config.data.eval_split={d.eval_split!r} is "
                         f"not a split of {d.name!r}; it has {sorted(split_sizes)})")
            d.eval_split = other
    return notes


def validate_against_data(config: ml_collections.ConfigDict, split_sizes: dict[str, int]) -> None:
    """Checks what depends on the dataset: the train split exists, k fits the number of images.
    A missing eval split is an error only where something needs it (the evaluators and
    `eval_every_epochs` say so themselves)."""
    d = config.data
    require(d.train_split in split_sizes,
             f"config.data.train_split={d.train_split!r} is not a split of {d.name!r} "
             f"(it has {sorted(split_sizes)})")
    n = split_sizes[d.train_split]
    require(config.batch_size <= n, f"config.batch_size={config.batch_size} but the dataset "
             f"{d.name!r} has {n} images in split {d.train_split!r}")
    if config.method != "deepcluster":  # config.clustering is DeepCluster's (v1) section
        return
    require(config.clustering.k >= 2, f"config.clustering.k={config.clustering.k}: call "
             f"resolve_auto first")
    require(config.clustering.k <= n, f"config.clustering.k={config.clustering.k} but the "
             f"dataset {d.name!r} has {n} images in split {d.train_split!r}")
    require(config.clustering.pca_dim <= n, f"config.clustering.pca_dim="
             f"{config.clustering.pca_dim} but the dataset {d.name!r} has {n} images in split "
             f"{d.train_split!r}: PCA gives at most one component per image")


MIN_IMAGES_PER_CLUSTER = 10


def few_images_per_cluster(config: ml_collections.ConfigDict, n: int) -> str | None:
    """A one-line warning when k leaves fewer than MIN_IMAGES_PER_CLUSTER images per cluster on
    average (n images in the train split), else None."""
    k = config.clustering.k
    if k * MIN_IMAGES_PER_CLUSTER <= n:
        return None
    return (f"warning: config.clustering.k={k} leaves {n / k:.1f} images per cluster on average "
            f"({n:,} images): clusters that small are mostly noise to train on (the paper: 128 "
            f"per cluster, ImageNet at k = 10,000); k <= {max(2, n // MIN_IMAGES_PER_CLUSTER):,} "
            f"keeps {MIN_IMAGES_PER_CLUSTER} or more")


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """`get_config(arg)` of a config file, as `--config=path:arg` would load it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"dcjax_config_{Path(path).stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()
