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
    """NMI of the pseudo-labels against the true labels (paper Fig. 2a) and against the previous
    epoch's assignment (Fig. 2b)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [h["epoch"] for h in history]
    for ax, key, title in ((axes[0], "nmi_labels", "NMI(pseudo-labels, true labels)"),
                           (axes[1], "nmi_prev", "NMI(epoch t-1, epoch t)")):
        points = [(e, h[key]) for e, h in zip(epochs, history) if h.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o")
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


def write_epoch_plots(workdir: str | Path, history: list[dict[str, Any]], assignment: np.ndarray,
                      k: int) -> None:
    out = Path(workdir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    plot_nmi(history, out / "nmi.png")
    plot_cluster_sizes(assignment, k, out / "cluster_sizes.png", history[-1]["epoch"])
    plot_phase_times(history, out / "phase_times.png")
