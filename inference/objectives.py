"""Training objectives assembled from Pyro's ELBO and this package's handlers."""
from __future__ import annotations

import functools
from typing import Optional

import pyro
import torch

from inference.handlers.competition import Competition
from inference.handlers.scale import ScaleSites


def econ_loss(model, guide, x: torch.Tensor, beta: float, gamma: float, greedy: bool = False,
              temperature: float = 1.0, regions: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Negative ECON objective, eq. (13), averaged over the batch.

    ``TraceMeanField_ELBO`` with the guide under :class:`Competition` and the sites weighted by
    :class:`ScaleSites` (``z_t`` by beta, ``r_t`` by gamma, in model and guide alike) gives, per
    image, ``sum_t (L^_x,t + beta L^_z,t + gamma L^_r,t) + T log K + C H W log(sigma_x sqrt(2 pi))``:
    eq. (13) plus two constants (the uniform prior over k_t and the Gaussian normaliser).
    ``greedy`` and ``temperature`` only change how the winners are drawn (:class:`Competition`;
    the guide scores them), not the loss.

    ``regions`` (B, T, 1, H, W; layer t = 1, the back, first): the visible regions are given
    (generative MONet, ECON section 5.1). The model's sites ``r_t`` are conditioned on them with
    ``pyro.condition`` and the guide takes them (``guide(x, regions=...)``): the loss is then
    ``-log p(x, r | z, k) + beta KL(q(z) || p(z))``, with ``gamma`` weighting ``-log p(r_t | ...)``.
    """
    if regions is not None:
        model = pyro.condition(model, data={f"r_{t}": regions[:, t - 1].to(x.dtype) for t in range(1, regions.shape[1] + 1)})
        guide = functools.partial(guide, regions=regions)
    elbo = pyro.infer.TraceMeanField_ELBO()
    with ScaleSites({"z_*": beta, "r_*": gamma}):
        loss = elbo.differentiable_loss(model, Competition(greedy=greedy, temperature=temperature)(guide), x)
    return loss / x.shape[0]
