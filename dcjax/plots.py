"""Figures written to `workdir/plots/` after every epoch (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_nmi(history: list[dict[str, Any]], path: Path) -> None:
    """NMI of the pseudo-labels against the true labels (paper Fig. 2a; only when the images are
    labelled), against the previous epoch's assignment (Fig. 2b) and the label-free signals
    (dcjax.quality: agreement with k-means on the raw pixels, median cluster cohesion)."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]

    def points(key):
        return [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]

    panels = [p for p in (
        ("NMI(pseudo-labels, true labels)", [("nmi_labels", None)]),
        ("NMI(epoch t-1, epoch t)", [("nmi_prev", None)]),
        ("label-free signals", [("pixel_agreement", "NMI with k-means on pixels"),
                                ("cohesion_median", "median cluster cohesion")]),
    ) if any(points(key) for key, _ in p[1])] or [("NMI(epoch t-1, epoch t)", [("nmi_prev", None)])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key, label in keys:
            if points(key):
                ax.plot(*zip(*points(key)), marker="o", label=label)
        if any(label for _, label in keys):
            ax.legend(fontsize=8)
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_cluster_sizes(assignment: np.ndarray, k: int, path: Path, epoch: int) -> None:
    plt = _pyplot()
    sizes = np.sort(np.bincount(assignment, minlength=k))[::-1]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(np.arange(k), sizes, width=1.0)
    ax.set_xlabel("cluster (sorted by size)")
    ax.set_ylabel("images")
    ax.set_title(f"cluster sizes, epoch {epoch} ({np.count_nonzero(sizes)} non-empty of {k})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_phase_times(history: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    phases = ["time_extract", "time_pca", "time_kmeans", "time_train"]
    epochs = np.array([h["epoch"] for h in history])
    bottom = np.zeros(len(history))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for phase in phases:
        values = np.array([h.get(phase) or 0.0 for h in history])
        ax.bar(epochs, values, bottom=bottom, label=phase.removeprefix("time_"))
        bottom += values
    ax.set_xlabel("epoch")
    ax.set_ylabel("seconds")
    ax.legend()
    ax.set_title("time per phase")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def nearest_to_centroids(assignment: np.ndarray, distance: np.ndarray, clusters: np.ndarray,
                         per_cluster: int) -> list[np.ndarray]:
    """For each cluster id in `clusters`, the indices of its `per_cluster` members with the smallest
    distance to its centroid, nearest first."""
    out = []
    for c in clusters:
        members = np.flatnonzero(assignment == c)
        out.append(members[np.argsort(distance[members], kind="stable")[:per_cluster]])
    return out


def pick_clusters(assignment: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` random non-empty clusters (seeded), largest first."""
    sizes = np.bincount(assignment[assignment >= 0])
    nonempty = np.flatnonzero(sizes)
    chosen = np.random.default_rng(seed).choice(nonempty, size=min(count, len(nonempty)),
                                                replace=False)
    return chosen[np.argsort(-sizes[chosen], kind="stable")]


def plot_cluster_grid(images: list[np.ndarray], clusters: np.ndarray, sizes: np.ndarray,
                      path: Path, title: str) -> None:
    """One row per cluster: its images nearest the centroid ([n, H, W, 3] uint8 each)."""
    plt = _pyplot()
    cols = max((len(x) for x in images), default=1)
    fig, axes = plt.subplots(len(images), cols, figsize=(1.1 * cols + 1.2, 1.1 * len(images) + 0.5),
                             squeeze=False)
    for r, row in enumerate(images):
        for col in range(cols):
            ax = axes[r][col]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if col < len(row):
                ax.imshow(row[col])
        axes[r][0].set_ylabel(f"{clusters[r]}\n({sizes[r]})", rotation=0, ha="right",
                              va="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_filters(kernel: np.ndarray, path: Path, title: str) -> None:
    """First-layer filters [kh, kw, in, out]: RGB tiles for 3 input channels, else one grey tile per
    input channel (e.g. the two Sobel gradients) side by side; each filter scaled to [0, 1]."""
    plt = _pyplot()
    kernel = np.asarray(kernel, np.float32)
    kh, kw, cin, cout = kernel.shape
    tiles = []
    for f in range(cout):
        w = kernel[..., f]
        w = (w - w.min()) / max(float(w.max() - w.min()), 1e-12)
        if cin == 3:
            tiles.append(w)
        else:
            gap = np.ones((kh, 1))
            row = np.concatenate([x for c in range(cin) for x in (w[..., c], gap)][:-1], axis=1)
            tiles.append(np.repeat(row[..., None], 3, axis=2))
    cols = int(np.ceil(np.sqrt(cout)))
    rows = int(np.ceil(cout / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * (0.5 + 0.4 * (cin != 3)) + 0.5,
                                                  rows * 0.5 + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < cout:
            ax.imshow(tiles[i], interpolation="nearest")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_epoch_plots(workdir: str | Path, history: list[dict[str, Any]], assignment: np.ndarray,
                      k: int) -> None:
    out = Path(workdir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    plot_nmi(history, out / "nmi.png")
    plot_cluster_sizes(assignment, k, out / "cluster_sizes.png", history[-1]["epoch"])
    plot_phase_times(history, out / "phase_times.png")
