"""Amortised guide for :class:`pyro_scenes.VAE` (GNM supplement section 4.2)."""
from __future__ import annotations

import contextlib
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_scenes.gnm.handlers import ModeSites
from pyro_scenes.nn.subpixel import ConvStack
from pyro_scenes.vae import VAE


class VAEGuide(nn.Module):
    """q(z | x) = N(mean, softplus(std)): GNM's image encoder (supplement Table 4) to a C x G x G
    encoding, then a 2-layer CNN: a padded 3x3 conv (CELU, GroupNorm) and an unpadded G x G conv to
    ``2 D`` channels at 1x1 (the paper's kernels [3, 4] at G = 4).

    The model is held by reference, not as a sub-module.
    """

    def __init__(self, model: VAE):
        super().__init__()
        if not isinstance(model, VAE):
            raise TypeError(f"VAEGuide needs a pyro_scenes.VAE model, got {type(model).__name__}")
        object.__setattr__(self, "model", model)
        cfg = self.cfg = model.cfg
        self.encoder = ConvStack(cfg.channels, cfg.enc_filters, cfg.enc_kernels, cfg.enc_strides, groups=1, norm_act_final=True)
        self.latent = nn.Sequential(
            ConvStack(self.encoder.out_channels, [cfg.latent_filters], [3], groups=1, norm_act_final=True),
            nn.Conv2d(cfg.latent_filters, 2 * cfg.z_dim, cfg.grid))

    def posterior(self, x: torch.Tensor):
        """``(mean, std)`` of q(z | x), each ``(B, D)``."""
        mean, std = self.latent(self.encoder(x)).flatten(-3).chunk(2, -1)
        return mean, F.softplus(std)

    def forward(self, x: torch.Tensor, batch_size: Optional[int] = None, mode: bool = False):
        """Sample z given images ``x`` ``(B, C, H, W)`` (``mode=True``: the posterior mean)."""
        if x is None:
            raise ValueError("VAEGuide needs the images x")
        B = self.model.check_input(x, batch_size, who="VAEGuide")
        pyro.module("vae_guide", self)
        mean, std = self.posterior(x)
        with ModeSites(["z"]) if mode else contextlib.nullcontext():
            with pyro.plate("batch", B, dim=-1):
                return pyro.sample("z", dist.Normal(mean, std).to_event(1))
