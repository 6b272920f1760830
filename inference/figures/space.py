"""SPACE's figures: reconstructions with the inferred boxes, and the decomposition of each scene
into foreground, alpha and the K background components (docs/space.md)."""
from __future__ import annotations

from pathlib import Path
from typing import List

import torch
from pyro import poutine

from inference.figures.common import plt, save, show
from inference.figures.gnm import plot_reconstructions
from inference.handlers.temperature import RelaxationTemperature


@torch.no_grad()
def decompose(model, guide, images: torch.Tensor):
    """Mixture ``(weights (B, K+1, 1, H, W), means (B, K+1, C, H, W))`` at the posterior modes."""
    with RelaxationTemperature(0.0):
        tr = poutine.trace(guide).get_trace(images, mode=True)
    z = {name: tr.nodes[name]["value"] for name in model.latent_sites()}
    K = model.cfg.num_components
    z_mask = torch.cat([z[f"z_mask_{k}"] for k in range(1, K + 1)], -2)
    z_comp = torch.cat([z[f"z_comp_{k}"] for k in range(1, K + 1)], -2)
    return model.render(z["z_pres"], z["z_where"], z["z_depth"], z["z_what"], z_mask, z_comp)


@torch.no_grad()
def plot_decomposition(model, guide, images: torch.Tensor, path: Path) -> Path:
    """Columns: input, reconstruction (mixture mean), foreground (alpha * fg), alpha, then each
    background component ``(1 - alpha) m_k mu_k``; one row per image."""
    weights, means = decompose(model, guide, images)
    recon = (weights * means).sum(-4)
    parts = [("input", images), ("reconstruction", recon), ("foreground", weights[:, 0] * means[:, 0]),
             ("alpha", weights[:, 0].expand_as(means[:, 0]))]
    parts += [(f"background {k}", weights[:, k] * means[:, k]) for k in range(1, weights.shape[1])]
    rows = images.shape[0]
    fig, axes = plt.subplots(rows, len(parts), figsize=(1.5 * len(parts), 1.5 * rows + 0.4), squeeze=False)
    for c, (title, imgs) in enumerate(parts):
        axes[0, c].set_title(title, fontsize=8)
        for r in range(rows):
            show(axes[r, c], imgs[r].clamp(0, 1))
    fig.tight_layout()
    return save(fig, path)


def space_figures(model, guide, images: torch.Tensor, out_dir: Path, prefix: str = "space_") -> List[Path]:
    """Reconstructions with boxes and the decomposition of a batch of held-out ``images`` (eval mode)."""
    out_dir = Path(out_dir)
    was = model.training, guide.training
    model.eval(), guide.eval()
    try:
        return [plot_reconstructions(model, guide, images, out_dir / f"{prefix}reconstructions.png"),
                plot_decomposition(model, guide, images[:6], out_dir / f"{prefix}decomposition.png")]
    finally:
        model.train(was[0]), guide.train(was[1])
