"""Figures written beside an evaluation's JSON (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch


def named(prefix: Path, suffix: str) -> Path:
    """``<prefix>_<suffix>.png``."""
    return prefix.with_name(f"{prefix.name}_{suffix}.png")


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def bar_chart(values: Dict[str, float], path: Path, title: str) -> Path:
    plt = _plt()
    names = [k for k, v in values.items() if v is not None and v == v]
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(names) + 1), 3.2))
    vals = [values[k] for k in names]
    ax.bar(range(len(names)), vals, color="#4c72b0")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right")
    for i, v in enumerate(vals):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max([1.0] + [v * 1.1 for v in vals]))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def histograms(series: Dict[str, torch.Tensor], path: Path, title: str, bins: int = 20) -> Path:
    plt = _plt()
    n = len(series)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.8), squeeze=False)
    for ax, (name, v) in zip(axes[0], series.items()):
        v = torch.as_tensor(v, dtype=torch.float32)
        v = v[~torch.isnan(v)]
        unit = len(v) > 0 and float(v.min()) >= -1.0 and float(v.max()) <= 1.0
        ax.hist(v.numpy(), bins=bins, range=(min(0.0, float(v.min())), 1.0) if unit else None, color="#55a868")
        ax.set_title(f"{name} (mean {float(v.mean()) if len(v) else float('nan'):.3f})", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmap(matrix: torch.Tensor, row_names: Sequence[str], col_names: Sequence[str], path: Path, title: str,
            normalise_rows: bool = True) -> Path:
    plt = _plt()
    m = torch.as_tensor(matrix, dtype=torch.float32)
    shown = m / m.sum(1, keepdim=True).clamp_min(1) if normalise_rows else m
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * m.shape[1], 1.0 + 0.6 * m.shape[0]))
    im = ax.imshow(shown.numpy(), cmap="viridis", vmin=0, vmax=1 if normalise_rows else None)
    ax.set_xticks(range(m.shape[1]))
    ax.set_xticklabels(col_names)
    ax.set_yticks(range(m.shape[0]))
    ax.set_yticklabels(row_names)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", color="w" if shown[i, j] < 0.5 else "k", fontsize=8)
    ax.set_xlabel("expert")
    ax.set_ylabel("class")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curve(points: List, path: Path, title: str, xlabel: str, ylabel: str, hline: Optional[float] = None) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    if points:
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker=".")
    if hline is not None:
        ax.axhline(hline, color="r", ls="--", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def image_grid(images: torch.Tensor, path: Path, nrow: int = 8, captions: Optional[Sequence[str]] = None,
               title: str = "") -> Path:
    plt = _plt()
    x = torch.as_tensor(images).detach().cpu().clamp(0, 1)
    n = len(x)
    ncol = min(nrow, n)
    nrows = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrows, ncol, figsize=(1.6 * ncol, 1.75 * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            img = x[k]
            ax.imshow(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1)
            if captions is not None:
                ax.set_title(captions[k], fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def log_likelihood_histogram(evaluation: Dict, prefix: Path) -> List[Path]:
    """``<prefix>_ll.png``, the per-image ``log p(x)`` of an evaluation with ``ll``; else nothing."""
    if "ll" not in evaluation:
        return []
    k = evaluation["results"].get("ll_particles")
    return [histograms({"log p(x) (nats)": evaluation["ll"]}, named(prefix, "ll"),
                       f"importance-weighted LL per image (K = {k})")]
