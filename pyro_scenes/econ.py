"""ECON: the dead-leaves layered scene model with K competing experts (von Kuegelgen et al. 2020).

Generative process (section 2 and 4.1), written front to back so that every site's parents come
before it (the layers are independent, so the order of drawing them is immaterial)::

    s_T = 1
    for t = T, ..., 1:
        k_t ~ Categorical(pi)                      object class / expert          "k_t"
        z_t ~ N(0, I)                              object properties, p(z)        "z_t"
        mu_t, m~_t = f_{k_t}(z_t)                  appearance and unoccluded shape
        r_t ~ Bernoulli(s_t * m~_t)                visible region, eq. (7)        "r_t"
        s_{t-1} = s_t - r_t                        scope recursion, eq. (1)-(2)
    x ~ N(sum_t r_t mu_t, sigma_x^2)               image, eq. (6)                 "x"

Layer T is the front, layer 1 the back (usually the background expert). Site names:
``k_1..k_T``, ``z_1..z_T``, ``r_1..r_T`` and ``x``, all inside the plate ``"batch"`` (dim -1).
"""
from __future__ import annotations

from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_scenes.distributions import LayeredNormal, RegionBernoulli
from pyro_scenes.images import check_batch_size, check_image_batch
from pyro_scenes.nn.expert_nets import ExpertDecoder


def competition_score(terms, lam: float, per_pixel: bool = False) -> torch.Tensor:
    """The competition objective of section 5.2, ``lambda * L_x(k) + L_r(k)`` (eq. 10 and 12),
    shape (..., K); with ``per_pixel`` divided by each expert's region size ``sum r~_k`` (at least
    1), this project's choice (docs/econ.md). ``terms`` holds ``L_x``, ``L_r`` and ``area``."""
    score = lam * terms["L_x"] + terms["L_r"]
    return score / terms["area"].clamp_min(1.0) if per_pixel else score


class ECON(nn.Module):
    """The ECON generative model p(x, r, z | k) p(k), eq. (8), as a Pyro program.

    ``model(x)`` scores a batch of images ``x`` (float ``B x C x H x W`` in [0, 1]);
    ``model(batch_size=n)`` samples ``n`` scenes and returns the images (the noise-free
    composite ``sum_t r_t mu_t``). ``num_layers`` overrides T, e.g. to draw scenes with more
    objects than in training.

    Controlled generation (Fig. 1C, 7) is plain Pyro::

        scene = pyro.poutine.do(model, data={"k_1": torch.tensor(bg), "k_2": torch.tensor(2)})
        images = scene(batch_size=8)

    :param num_experts: K (K - 1 object classes plus the background).
    :param num_layers: T, the number of layers (objects plus background).
    :param latent_dim: dimension of z_t.
    :param image_size: H = W of the images.
    :param channels: image channels C.
    :param decoder_features: channels of the spatial-broadcast decoder (C.2.1).
    :param decoder_layers: 3x3 conv blocks of the decoder (C.2.1).
    :param sigma_x: pixel standard deviation of eq. (5)-(6) (left open by the paper).
    :param expert_probs: p(k_t); uniform by default.
    """

    def __init__(
        self,
        num_experts: int = 4,
        num_layers: int = 4,
        latent_dim: int = 2,
        image_size: int = 32,
        channels: int = 3,
        decoder_features: int = 32,
        decoder_layers: int = 4,
        sigma_x: float = 0.1,
        expert_probs: Optional[torch.Tensor] = None,
    ):
        super().__init__()
        for name, value in dict(num_experts=num_experts, num_layers=num_layers, latent_dim=latent_dim, image_size=image_size,
                                channels=channels, decoder_features=decoder_features, decoder_layers=decoder_layers).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ECON: {name} must be a positive integer, got {value!r}")
        if not sigma_x > 0:
            raise ValueError(f"ECON: sigma_x must be positive, got {sigma_x!r}")
        self.num_experts, self.num_layers, self.latent_dim = num_experts, num_layers, latent_dim
        self.image_size, self.channels, self.sigma_x = image_size, channels, float(sigma_x)
        self.decoder = ExpertDecoder(num_experts, latent_dim, image_size, channels, decoder_features, decoder_layers)
        if expert_probs is None:
            expert_probs = torch.full((num_experts,), 1.0 / num_experts)
        expert_probs = torch.as_tensor(expert_probs, dtype=torch.float)
        if expert_probs.shape != (num_experts,) or (expert_probs < 0).any() or not torch.isclose(expert_probs.sum(), torch.tensor(1.0)):
            raise ValueError(f"ECON: expert_probs must be {num_experts} probabilities summing to 1")
        self.register_buffer("expert_probs", expert_probs)

    def check_images(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is a float ``B x C x H x W`` batch (B >= 1) of this model's
        size with finite values in [0, 1]."""
        check_image_batch(x, (self.channels, self.image_size, self.image_size), "ECON")

    def forward(self, x: Optional[torch.Tensor] = None, batch_size: Optional[int] = None, num_layers: Optional[int] = None) -> torch.Tensor:
        if x is not None:
            self.check_images(x)
            batch_size = x.shape[0]
        elif batch_size is None:
            raise ValueError("ECON: pass images x to score, or batch_size >= 1 to sample")
        else:
            batch_size = check_batch_size(batch_size, "ECON")
        T = self.num_layers if num_layers is None else int(num_layers)
        if T < 1:
            raise ValueError(f"ECON: num_layers must be >= 1, got {T}")
        pyro.module("econ", self)
        size = (1, self.image_size, self.image_size)
        means, regions = [], []
        with pyro.plate("batch", batch_size, dim=-1):
            scope = self.expert_probs.new_ones(size)
            for t in range(T, 0, -1):
                k = pyro.sample(f"k_{t}", dist.Categorical(self.expert_probs))
                z = pyro.sample(f"z_{t}", dist.Normal(scope.new_zeros(()), 1.0).expand([self.latent_dim]).to_event(1))  # on the model's device
                mu, shape = self.decoder(z, experts=k)
                r = pyro.sample(f"r_{t}", RegionBernoulli(scope * shape).to_event(3))
                scope = scope - r
                means.append(mu)
                regions.append(r)
            # layers stacked back (t = 1) to front (t = T)
            means = torch.stack(means[::-1], dim=-4)
            regions = torch.stack(regions[::-1], dim=-4)
            pyro.sample("x", LayeredNormal(means, regions, self.sigma_x).to_event(3), obs=x)
        return (regions * means).sum(-4)
