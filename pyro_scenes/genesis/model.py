"""GENESIS's generative model as a Pyro program (Engelcke et al. 2019; docs/genesis.md)."""
from __future__ import annotations

import contextlib
from typing import Optional

import pyro
import torch
from torch import nn

from pyro_scenes.genesis.config import GENESISConfig, preset as _preset
from pyro_scenes.genesis.networks import ComponentDecoder, MaskDecoder
from pyro_scenes.gnm.handlers import ModeSites
from pyro_scenes.gnm.networks import GaussianHead
from pyro_scenes.images import check_call
from pyro_scenes.space.distributions import PixelMixture
from pyro_scenes.space.model import sample_components
from pyro_scenes.space.networks import AutoregressiveGaussian, stick_breaking


class GENESIS(nn.Module):
    r"""GENESIS: a scene as K components, each a mask latent and a component latent.

    The generative model of GENESIS (Engelcke et al. 2019)::

        p(x, z^m, z^c) = prod_k p(z^m_k | z^m_<k) p(z^c_k | z^m_k) * prod_pixels sum_k pi_k(z^m_1..k) N(x; mu(z^c_k), sigma^2)

    ``model(x)`` scores images ``x`` ``(B, C, H, W)``; ``model(batch_size=n)`` samples ``n`` scenes
    from the prior. Either call returns the mean image ``(..., B, C, H, W)``.

    Sample sites, in program order (one plate, ``batch`` (B, dim -1)):

    ===============  ==================  ======================================================
    site             value shape         distribution
    ===============  ==================  ======================================================
    ``z_mask_k``     ``(B, z_mask)``     ``N(LSTM(z_mask_<k))``, k = 1..K: the autoregressive
                                         prior p(z^m_k | z^m_<k)
    ``z_comp_k``     ``(B, z_comp)``     ``N(MLP(z_mask_k))``: p(z^c_k | z^m_k); after
                                         ``z_mask_k``, before ``z_mask_{k+1}``
    ``x``            ``(B, C, H, W)``    :class:`~pyro_scenes.space.distributions.PixelMixture`:
                                         per pixel ``sum_k pi_k N(x; mu_k, sigma)``, the channels
                                         of a pixel sharing its component
    ===============  ==================  ======================================================

    The masks pi_k are GENESIS's stick-breaking process, ``pi_k = s_{k-1} sigmoid(a_k)``,
    ``s_k = s_{k-1} (1 - sigmoid(a_k))``, ``s_0 = 1``, ``pi_K = s_{K-1}``, the logits ``a_k`` decoded from
    z_mask_k at full resolution (:class:`~pyro_scenes.genesis.networks.MaskDecoder`); the
    component means ``mu_k`` are decoded from z_comp_k by the spatial-broadcast decoder
    (:class:`~pyro_scenes.genesis.networks.ComponentDecoder`, 3 layers as in the GNM supplement).
    The mask prior is SPACE's :class:`~pyro_scenes.space.networks.AutoregressiveGaussian` (an LSTM
    fed the previous mask latent; its learned initial state gives p(z^m_1)); the component prior
    a :class:`~pyro_scenes.gnm.networks.GaussianHead` MLP on z^m_k.
    """

    def __init__(self, config: Optional[GENESISConfig] = None, **overrides):
        super().__init__()
        cfg = _preset("cpu") if config is None else config
        cfg = cfg.replace(**overrides) if overrides else cfg
        cfg.validate()
        self.cfg = cfg
        self.mask_prior = AutoregressiveGaussian(0, cfg.z_mask_dim, cfg.mask_prior_hidden)
        self.comp_prior = GaussianHead(cfg.z_mask_dim, cfg.comp_prior_hidden, cfg.z_comp_dim)
        self.mask_decoder = MaskDecoder(cfg)
        self.comp_decoder = ComponentDecoder(cfg)
        self.register_buffer("scales", torch.full((cfg.num_components,), float(cfg.sigma)), persistent=False)

    @classmethod
    def preset(cls, name: str, **overrides) -> "GENESIS":
        """``GENESIS.preset("cpu")`` (64x64 digits), ``"arrow-cpu"``, ``"paper"``, ``"paper-arrow"``, ``"tiny"``."""
        return cls(_preset(name, **overrides))

    def check_input(self, x=None, batch_size=None, who: str = "GENESIS") -> int:
        """The batch size of a call: B of images ``x`` (float, ``(B, C, H, W)`` of this model's size,
        finite, in [0, 1]) or ``batch_size`` (an integer >= 1) when sampling; ``ValueError`` otherwise."""
        cfg = self.cfg
        return check_call(x, batch_size, (cfg.channels, cfg.image_size, cfg.image_size), who)

    def latent_sites(self):
        """The names of the latent sites, in program order."""
        return [f"z_{part}_{k}" for k in range(1, self.cfg.num_components + 1) for part in ("mask", "comp")]

    def mask_logits(self, z_mask: torch.Tensor) -> torch.Tensor:
        """Mask latents ``(..., D)`` -> logits ``(..., 1, H, W)``."""
        return self.mask_decoder(z_mask)

    def masks(self, z_mask: torch.Tensor) -> torch.Tensor:
        """Mask latents ``(..., K, D)`` -> stick-breaking masks pi_k ``(..., K, 1, H, W)``."""
        return stick_breaking(self.mask_logits(z_mask))

    def render(self, z_mask: torch.Tensor, z_comp: torch.Tensor):
        """The mixture's ``(weights (..., K, 1, H, W), means (..., K, C, H, W))`` of latents
        ``z_mask (..., K, D_m)`` and ``z_comp (..., K, D_c)``."""
        return self.masks(z_mask), self.comp_decoder(z_comp)

    def forward(self, x: Optional[torch.Tensor] = None, batch_size: Optional[int] = None, mode: bool = False):
        """Score ``x`` ``(B, C, H, W)`` or, with ``x=None``, sample ``batch_size`` scenes
        (``mode=True``: every latent at its prior mode)."""
        cfg = self.cfg
        pyro.module("genesis", self)
        B = self.check_input(x, batch_size, who="GENESIS")
        with contextlib.ExitStack() as stack:
            if mode:
                stack.enter_context(ModeSites(self.latent_sites()))
            with pyro.plate("batch", B, dim=-1):
                z_mask, z_comp = sample_components(self.mask_prior, self.comp_prior, cfg.num_components, (B,))
                z_mask = torch.stack(torch.broadcast_tensors(*z_mask), -2)
                z_comp = torch.stack(torch.broadcast_tensors(*z_comp), -2)
                weights, means = self.render(z_mask, z_comp)
                likelihood = PixelMixture(weights, means, self.scales)
                pyro.sample("x", likelihood, obs=x)
        return likelihood.mean

    @torch.no_grad()
    def sample(self, n: int, mode: bool = False) -> torch.Tensor:
        """``n`` generations ``(n, C, H, W)`` (mean images of latents drawn from the prior;
        ``mode=True``: at the prior's modes)."""
        return self(batch_size=n, mode=mode)
