"""Training objectives assembled from Pyro's ELBO and this package's handlers."""
from __future__ import annotations

import pyro
import torch

from inference.handlers.competition import Competition
from inference.handlers.scale import ScaleSites


def econ_loss(model, guide, x: torch.Tensor, beta: float, gamma: float, greedy: bool = False,
              temperature: float = 1.0) -> torch.Tensor:
    """Negative ECON objective, eq. (13), averaged over the batch.

    ``TraceMeanField_ELBO`` with the guide under :class:`Competition` and the sites weighted by
    :class:`ScaleSites` (``z_t`` by beta, ``r_t`` by gamma, in model and guide alike) gives, per
    image, ``sum_t (L^_x,t + beta L^_z,t + gamma L^_r,t) + T log K + C H W log(sigma_x sqrt(2 pi))``:
    eq. (13) plus two constants (the uniform prior over k_t and the Gaussian normaliser).
    ``greedy`` and ``temperature`` only change how the winners are drawn (:class:`Competition`;
    the guide scores them), not the loss.
    """
    elbo = pyro.infer.TraceMeanField_ELBO()
    with ScaleSites({"z_*": beta, "r_*": gamma}):
        loss = elbo.differentiable_loss(model, Competition(greedy=greedy, temperature=temperature)(guide), x)
    return loss / x.shape[0]
