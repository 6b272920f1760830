"""GNM figures: reconstructions with the inferred boxes, generations, and z^s resampled with z^g
fixed (Jiang & Ahn 2020, supplement Fig. 5 and 6)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pyro
import torch
from matplotlib.patches import Rectangle
from pyro import poutine

from inference.figures.common import plt, save, show
from inference.handlers.temperature import RelaxationTemperature


def gnm_figures(model, guide, images: torch.Tensor, out_dir: Path, prefix: str = "gnm_", num_resample: int = 6) -> List[Path]:
    """The three figures for a batch of held-out ``images``, drawn in eval mode."""
    out_dir = Path(out_dir)
    was = model.training, guide.training
    model.eval(), guide.eval()
    try:
        return [plot_reconstructions(model, guide, images, out_dir / f"{prefix}reconstructions.png"),
                plot_generations(model, out_dir / f"{prefix}generations.png"),
                plot_zs_resampling(model, guide, images, out_dir / f"{prefix}zs_resampling.png", num_resample)]
    finally:
        model.train(was[0]), guide.train(was[1])


@torch.no_grad()
def reconstruct(model, guide, images: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Deterministic reconstruction: guide at its mode (q means, z_pres = q prob > 0.5), model
    replayed; with the guide's posterior summaries (:meth:`~guides.GNMGuide.infer`)."""
    with RelaxationTemperature(0.0):
        tr = poutine.trace(guide).get_trace(images, mode=True)
        recon = poutine.replay(model, trace=tr)(images)
    info = guide.infer(images)
    info["recon"] = recon
    return info


@torch.no_grad()
def resample_zs(model, z_g: Dict[str, torch.Tensor], num: int) -> torch.Tensor:
    """Images with z^g fixed and z^s (and z_bg) resampled ``num`` times: ``(num, B, C, H, W)``."""
    B = next(iter(z_g.values())).shape[0]
    with RelaxationTemperature(0.0):
        return torch.stack([pyro.condition(model, data=z_g)(batch_size=B, mode=False) for _ in range(num)])


def draw_boxes(ax, boxes: torch.Tensor, pres: torch.Tensor) -> None:
    """Outline the present boxes (``(K, 4)`` pixels x0, y0, x1, y1; ``pres`` (K,)) on ``ax``."""
    for (x0, y0, x1, y1), p in zip(boxes.tolist(), pres.tolist()):
        if p > 0:
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1, ec="lime"))


@torch.no_grad()
def plot_reconstructions(model, guide, images: torch.Tensor, path: Path) -> Path:
    """Row 1 the inputs, row 2 the reconstructions, both with the inferred boxes."""
    n = images.shape[0]
    info = reconstruct(model, guide, images)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    for i in range(n):
        for ax, shown in zip(axes[:, i], (images[i], info["recon"][i])):
            show(ax, shown)
            draw_boxes(ax, info["boxes"][i], info["pres"][i])
    axes[0, 0].set_ylabel("input + boxes")
    axes[1, 0].set_ylabel("reconstruction")
    fig.tight_layout()
    return save(fig, path)


@torch.no_grad()
def plot_generations(model, path: Path, num: int = 16) -> Path:
    """``num`` generations: z^g from the prior, z^s at its mode."""
    gen = model.sample(num)
    fig, axes = plt.subplots(2, (num + 1) // 2, figsize=(1.6 * ((num + 1) // 2), 3.9), squeeze=False)
    for ax, shown in zip(axes.flat, gen):
        show(ax, shown)
    fig.suptitle("generations (z^g ~ prior, mode z^s)")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return save(fig, path)


@torch.no_grad()
def plot_zs_resampling(model, guide, images: torch.Tensor, path: Path, num_resample: int = 6) -> Path:
    """Each row one z^g (inferred from the first images, then drawn from the prior) with z^s
    resampled ``num_resample`` times."""
    rows, L = min(3, images.shape[0]), model.cfg.draw_steps
    inferred = guide.infer(images[:rows])["z_g"]
    post = {f"z_g_{l + 1}": inferred[:, l].unsqueeze(-2) for l in range(L)}
    prior_trace = poutine.trace(model).get_trace(batch_size=rows)
    prior = {f"z_g_{l + 1}": prior_trace.nodes[f"z_g_{l + 1}"]["value"] for l in range(L)}
    grids = [("z^g inferred", resample_zs(model, post, num_resample)), ("z^g from the prior", resample_zs(model, prior, num_resample))]
    fig, axes = plt.subplots(2 * rows, num_resample, figsize=(1.6 * num_resample, 1.7 * 2 * rows), squeeze=False)
    for g, (title, imgs) in enumerate(grids):
        for r in range(rows):
            for c in range(num_resample):
                show(axes[g * rows + r, c], imgs[c, r])
            axes[g * rows + r, 0].set_ylabel(title if r == 0 else "", fontsize=7)
    fig.suptitle("z^s resampled with z^g fixed (each row one z^g)")
    fig.tight_layout()
    return save(fig, path)
