"""Read a scene decomposition out of ECON's guide (the step-by-step view of Fig. 4)."""
from __future__ import annotations

from typing import Dict, Optional

import pyro
import torch

from inference.handlers.competition import Competition


def regions_from_masks(visible_masks: torch.Tensor) -> torch.Tensor:
    """The model's layers from a scene's objects (listed back to front, as the sprites are):
    ``(B, N, H, W)`` visible masks -> ``(B, N + 1, 1, H, W)`` regions r_1..r_{N+1}, where r_1 is
    the background (what no object covers) and r_{t+1} the t-th object from the back."""
    masks = visible_masks.float()
    background = 1.0 - masks.sum(1, keepdim=True).clamp(max=1.0)
    return torch.cat([background, masks], 1).unsqueeze(2)


@torch.no_grad()
def decompose(model, guide, x: torch.Tensor, greedy: bool = True, regions: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """Infer layers front to back with the guide's competition and decode each winner's full object.

    Returns tensors indexed by layer ``t - 1`` (index ``T - 1`` is the front layer):

    * ``experts`` (B, T) winning expert per layer;
    * ``scopes`` (B, T, 1, H, W) s_t; ``regions`` (B, T, 1, H, W) r~_t (they sum to one);
    * ``appearance`` (B, T, C, H, W) mu_{k_t}(z_t), the full (inpainted) object;
    * ``masks`` (B, T, 1, H, W) m~_{k_t}(z_t), the unoccluded shape;
    * ``latents`` (B, T, L) z_t; ``reconstruction`` (B, C, H, W) sum_t r_t mu_t.

    ``regions`` (B, T, 1, H, W): decompose with these regions given (:func:`regions_from_masks`);
    the experts then compete on them and only the winners and their latents are inferred.
    """
    if regions is None:
        trace = pyro.poutine.trace(Competition(greedy=greedy)(guide)).get_trace(x)
    else:
        trace = pyro.poutine.trace(Competition(greedy=greedy)(guide)).get_trace(x, num_layers=regions.shape[1], regions=regions)
    T = sum(1 for name in trace.nodes if name.startswith("k_"))
    experts = torch.stack([trace.nodes[f"k_{t}"]["value"] for t in range(1, T + 1)], dim=1)
    latents = torch.stack([trace.nodes[f"z_{t}"]["value"] for t in range(1, T + 1)], dim=1)
    if regions is None:
        regions = torch.stack([trace.nodes[f"r_{t}"]["value"] for t in range(1, T + 1)], dim=1)
    regions = regions.to(x.dtype)
    # s_T = 1, s_{t-1} = s_t - r_t (the guide's recursion), i.e. s_t = 1 - sum_{t' > t} r_t'
    later = regions.flip(1).cumsum(1).flip(1) - regions
    scopes = 1.0 - later
    appearance, masks = model.decoder(latents, experts=experts)
    return dict(experts=experts, latents=latents, regions=regions, scopes=scopes, appearance=appearance, masks=masks,
                reconstruction=(regions * appearance).sum(1))
