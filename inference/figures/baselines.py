"""Figures of the generation baselines (VAE, ConvDRAW, GENESIS): held-out images beside their
reconstructions, and generations (GNM supplement Figures 1-4)."""
from __future__ import annotations

from pathlib import Path
from typing import List

import torch
from pyro import poutine

from inference.figures.common import plt, save, show


def baseline_figures(model, guide, images: torch.Tensor, out_dir: Path, prefix: str = "", num_generations: int = 16) -> List[Path]:
    """Reconstructions of ``images`` and ``num_generations`` generations, drawn in eval mode."""
    out_dir = Path(out_dir)
    was = model.training, guide.training
    model.eval(), guide.eval()
    try:
        return [plot_reconstructions(model, guide, images, out_dir / f"{prefix}reconstructions.png"),
                plot_generations(model, out_dir / f"{prefix}generations.png", num_generations)]
    finally:
        model.train(was[0]), guide.train(was[1])


@torch.no_grad()
def reconstruct(model, guide, images: torch.Tensor) -> torch.Tensor:
    """The model's mean image with its latents drawn from the guide (one posterior sample)."""
    trace = poutine.trace(guide).get_trace(images)
    return poutine.replay(model, trace=trace)(images)


@torch.no_grad()
def plot_reconstructions(model, guide, images: torch.Tensor, path: Path) -> Path:
    """Row 1 the inputs, row 2 their reconstructions."""
    n = images.shape[0]
    recon = reconstruct(model, guide, images)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    for i in range(n):
        show(axes[0, i], images[i])
        show(axes[1, i], recon[i])
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("reconstruction")
    fig.tight_layout()
    return save(fig, path)


@torch.no_grad()
def plot_generations(model, path: Path, num: int = 16) -> Path:
    """``num`` generations from the prior (``model.sample``)."""
    gen = model.sample(num)
    cols = (num + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(1.6 * cols, 3.6), squeeze=False)
    for ax, shown in zip(axes.flat, gen):
        show(ax, shown)
    for ax in list(axes.flat)[len(gen):]:
        ax.axis("off")
    fig.suptitle("generations (latents from the prior)")
    fig.tight_layout()
    return save(fig, path)
