"""ECON figures: step-by-step decomposition (Fig. 4), samples per expert (Fig. 1B, 6) and
layered generation from chosen experts (Fig. 1C, 7)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import pyro
import torch

from inference.decompose import decompose
from inference.figures.common import image, plt, save


def background_expert(experts: torch.Tensor) -> int:
    """The expert that most often wins the last (back) layer of a batch of decompositions."""
    return int(torch.bincount(experts[:, 0].flatten()).argmax())


@torch.no_grad()
def plot_decomposition(model, guide, images: torch.Tensor, path: Path, num_images: int = 2) -> Path:
    """Fig. 4: per inference step t' = T + 1 - t, the scope, the winner's region, the
    reconstruction in the region, the full (inpainted) object and its full shape."""
    out = decompose(model, guide, images[:num_images])
    T = out["experts"].shape[1]
    cols = ["input", "scope s_t", "region r_t", "r_t * x_t", "object x_t", "shape m_t"]
    fig, axes = plt.subplots(num_images * T, len(cols), figsize=(1.6 * len(cols), 1.6 * num_images * T), squeeze=False)
    for b in range(num_images):
        for i, t in enumerate(range(T - 1, -1, -1)):
            row = axes[b * T + i]
            panels = [images[b] if i == 0 else None, out["scopes"][b, t], out["regions"][b, t],
                      out["regions"][b, t] * out["appearance"][b, t], out["appearance"][b, t], out["masks"][b, t]]
            for j, (ax, p) in enumerate(zip(row, panels)):
                ax.axis("off")
                if p is not None:
                    ax.imshow(image(p), cmap="gray", vmin=0, vmax=1)
                if b * T + i == 0:
                    ax.set_title(cols[j], fontsize=8)
            row[1].text(-0.1, 0.5, f"t'={i + 1}\nk={int(out['experts'][b, t])}", transform=row[1].transAxes, ha="right", va="center", fontsize=7)
    return save(fig, path)


@torch.no_grad()
def plot_expert_samples(model, path: Path, num_samples: int = 8, seed: int = 0, rows_per_expert: Optional[int] = None) -> Path:
    """Fig. 1B / 6 (and Fig. 5 for one expert): ``rows_per_expert`` rows per expert (default
    ``max(1, 4 // K)``) of z ~ N(0, I) decoded by that expert, shown as mu * m~ + (1 - m~) * white."""
    gen = torch.Generator().manual_seed(seed)
    K = model.num_experts
    rows = max(1, 4 // K) if rows_per_expert is None else int(rows_per_expert)
    device = model.expert_probs.device
    z = torch.randn(K * rows, num_samples, model.latent_dim, generator=gen).to(device)
    k = torch.arange(K, device=device).repeat_interleave(rows).unsqueeze(1).expand(K * rows, num_samples)
    mu, m = model.decoder(z, experts=k)
    shown = mu * m + (1 - m)
    fig, axes = plt.subplots(K * rows, num_samples, figsize=(1.2 * num_samples, 1.2 * K * rows), squeeze=False)
    for row in range(K * rows):
        for s in range(num_samples):
            axes[row, s].imshow(image(shown[row, s]))
            axes[row, s].axis("off")
        if row % rows == 0:
            axes[row, 0].set_title(f"expert {row // rows}", fontsize=7, loc="left")
    return save(fig, path)


@torch.no_grad()
def plot_layered_generation(model, path: Path, background: int, objects: Optional[Sequence[int]] = None, max_layers: int = 5,
                            num_scenes: int = 6, seed: int = 0) -> Path:
    """Fig. 1C / 7: row j shows scenes with layers 1..j; layer 1 drawn from the background
    expert, each further layer from a random object expert, all by ``pyro.poutine.do`` on k_t
    and ``pyro.condition`` on z_t so the rows share their earlier layers."""
    device = model.expert_probs.device
    if objects is None:  # one expert (generative MONet) draws the objects and the background
        objects = [e for e in range(model.num_experts) if e != background] or [background]
    gen = torch.Generator().manual_seed(seed)
    ks = {f"k_{t}": torch.tensor(objects)[torch.randint(len(objects), (num_scenes,), generator=gen)].to(device) for t in range(2, max_layers + 1)}
    ks["k_1"] = torch.full((num_scenes,), background, device=device)
    zs = {f"z_{t}": torch.randn(num_scenes, model.latent_dim, generator=gen).to(device) for t in range(1, max_layers + 1)}
    fig, axes = plt.subplots(max_layers, num_scenes, figsize=(1.2 * num_scenes, 1.2 * max_layers), squeeze=False)
    with pyro.poutine.seed(rng_seed=seed):
        for j in range(1, max_layers + 1):
            scene = pyro.poutine.do(pyro.condition(model, data={f"z_{t}": zs[f"z_{t}"] for t in range(1, j + 1)}),
                                    data={f"k_{t}": ks[f"k_{t}"] for t in range(1, j + 1)})
            images = scene(batch_size=num_scenes, num_layers=j)
            for s in range(num_scenes):
                axes[j - 1, s].imshow(image(images[s]))
                axes[j - 1, s].axis("off")
            axes[j - 1, 0].set_title(f"{j} layer{'s' if j > 1 else ''}", fontsize=7, loc="left")
    return save(fig, path)


def econ_figures(model, guide, images: torch.Tensor, out_dir: Path) -> List[Path]:
    """All three ECON figures for a batch of held-out images."""
    out_dir = Path(out_dir)
    experts = decompose(model, guide, images)["experts"]
    bg = background_expert(experts)
    return [
        plot_decomposition(model, guide, images, out_dir / "decomposition.png"),
        plot_expert_samples(model, out_dir / "expert_samples.png"),
        plot_layered_generation(model, out_dir / "layered_generation.png", background=bg, max_layers=model.num_layers + 1),
    ]
