"""SPACE's generative model as a Pyro program (Lin et al. 2020; docs/space.md)."""
from __future__ import annotations

import contextlib
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyro_scenes.gnm.distributions import ConcreteBernoulli
from pyro_scenes.gnm.handlers import ModeSites
from pyro_scenes.gnm.model import GNM
from pyro_scenes.gnm.networks import GlimpseDecoder
from pyro_scenes.gnm.render import RenderOptions, render_alpha, render_options, where_from_raw
from pyro_scenes.nn.stn import where_to_boxes
from pyro_scenes.space.config import SPACEConfig, preset as _preset
from pyro_scenes.space.distributions import PixelMixture
from pyro_scenes.space.networks import AutoregressiveGaussian, BackgroundDecoders, ComponentPrior, stick_breaking


def sample_components(mask_prior, comp_prior, num_components: int, batch_shape):
    """The sites ``z_mask_k ~ p(z^m_k | z^m_<k)`` (``mask_prior``, an
    :class:`~pyro_scenes.space.networks.AutoregressiveGaussian`) and ``z_comp_k ~ p(z^c_k | z^m_k)``
    (``comp_prior``) for k = 1..K, in that order (GENESIS's prior; SPACE's background). Returns the
    lists of their values."""
    state = mask_prior.init_state(batch_shape)
    z_mask, z_comp = [], []
    for k in range(1, num_components + 1):
        loc, scale, (h, c) = mask_prior(state)
        zm = pyro.sample(f"z_mask_{k}", dist.Normal(loc, scale).to_event(1))
        loc, scale = comp_prior(zm)
        z_comp.append(pyro.sample(f"z_comp_{k}", dist.Normal(loc, scale).to_event(1)))
        z_mask.append(zm)
        state = (zm, h, c)
    return z_mask, z_comp


class SPACE(nn.Module):
    r"""SPACE: a grid of objects with fixed priors over a K-component background.

    ``model(x)`` scores images ``x`` ``(B, C, H, W)``; ``model(batch_size=n)`` samples ``n`` scenes
    from the prior. Either call returns the mean image ``(..., B, C, H, W)``.

    Sample sites, in program order (plates ``batch`` (B, dim -2) and ``cells`` (G*G = 16, dim -1)):

    ===============  ==================  ======================================================
    site             value shape         distribution
    ===============  ==================  ======================================================
    ``z_pres``       ``(B, 16)``         :class:`ConcreteBernoulli` with the fixed prior
                                         ``pres_prior``; analytic Bernoulli KL
    ``z_where``      ``(B, 16, 4)``      ``N(where_loc, where_scale)`` (GNM's raw z_where)
    ``z_depth``      ``(B, 16, 1)``      ``N(0, 1)``
    ``z_what``       ``(B, 16, D)``      ``N(0, 1)``
    ``z_mask_k``     ``(B, 1, z_mask)``  ``N(LSTM(z_mask_<k))``, k = 1..K
    ``z_comp_k``     ``(B, 1, z_comp)``  ``N(MLP(z_mask_k))``
    ``x``            ``(B, 1, C, H, W)`` :class:`~pyro_scenes.space.distributions.PixelMixture`
    ===============  ==================  ======================================================

    z_where, z_depth and z_what are scored under ``poutine.scale(z_pres)`` (clamped below at
    ``gate_min``) in model and guide alike, so their KLs count only where an object is present,
    as in SPACE's objective. The foreground (glimpses with alpha, depth-ordered compositing) is
    GNM's renderer; the background is GENESIS-style (:mod:`pyro_scenes.space.networks`).
    """

    def __init__(self, config: Optional[SPACEConfig] = None, **overrides):
        super().__init__()
        cfg = _preset("cpu") if config is None else config
        cfg = cfg.replace(**overrides) if overrides else cfg
        cfg.validate()
        self.cfg = cfg
        self.glimpse_decoder = GlimpseDecoder(cfg.fg)
        self.mask_prior = AutoregressiveGaussian(0, cfg.z_mask_dim, cfg.bg_hidden)
        self.comp_prior = ComponentPrior(cfg)
        self.bg_decoders = BackgroundDecoders(cfg)
        self.register_buffer("where_loc", torch.tensor(cfg.where_loc), persistent=False)
        self.register_buffer("where_scale", torch.tensor(cfg.where_scale), persistent=False)

    @classmethod
    def preset(cls, name: str, **overrides) -> "SPACE":
        """``SPACE.preset("cpu")`` (64x64 digits), ``"arrow-cpu"``, ``"tiny"``."""
        return cls(_preset(name, **overrides))

    check_input = GNM.check_input

    def boxes(self, z_where_raw: torch.Tensor) -> torch.Tensor:
        """Raw z_where ``(..., 16, 4)`` -> pixel boxes ``(..., 16, 4)`` as (x0, y0, x1, y1)."""
        return where_to_boxes(where_from_raw(z_where_raw, self.cfg.fg.grid), self.cfg.image_size)

    def latent_sites(self):
        """The names of the latent sites, in program order."""
        bg = [f"z_{part}_{k}" for k in range(1, self.cfg.num_components + 1) for part in ("mask", "comp")]
        return ["z_pres", "z_where", "z_depth", "z_what"] + bg

    def object_gate(self, z_pres: torch.Tensor) -> poutine.scale:
        """The handler that weights the per-object sites by presence (model and guide)."""
        return poutine.scale(scale=z_pres.clamp(min=self.cfg.gate_min))

    def masks(self, z_mask: torch.Tensor) -> torch.Tensor:
        """Mask latents ``(..., K, z_mask)`` -> stick-breaking masks ``(..., K, 1, H, W)``."""
        return stick_breaking(self.bg_decoders.mask_logits(z_mask))

    def render(self, z_pres, z_where, z_depth, z_what, z_mask, z_comp, options: RenderOptions = RenderOptions()):
        """The mixture's ``(weights (..., K+1, 1, H, W), means (..., K+1, C, H, W))``: the
        foreground first (alpha, composited glimpses), then ``(1 - alpha) m_k`` and the components."""
        cfg = self.cfg
        appearance, alpha = self.glimpse_decoder(z_what)
        where = where_from_raw(z_where, cfg.fg.grid)
        black = z_depth.new_zeros((cfg.channels, cfg.image_size, cfg.image_size))
        _, fg, alpha_map = render_alpha(appearance, alpha, z_pres, z_depth, where, black, cfg.image_size, cfg.fg.eps, options,
                                        mean_alpha=True)
        masks = self.masks(z_mask)
        weights = torch.cat([alpha_map.unsqueeze(-4), (1 - alpha_map.unsqueeze(-4)) * masks], -4)
        means = torch.cat([fg.unsqueeze(-4), self.bg_decoders.component_means(z_comp)], -4)
        return weights, means

    def forward(self, x: Optional[torch.Tensor] = None, batch_size: Optional[int] = None, mode: bool = False):
        """Score ``x`` ``(B, C, H, W)`` or, with ``x=None``, sample ``batch_size`` scenes
        (``mode=True``: every latent at its prior mode)."""
        cfg = self.cfg
        pyro.module("space", self)
        B = self.check_input(x, batch_size, who="SPACE")
        G2 = cfg.num_cells
        with contextlib.ExitStack() as stack:
            if mode:
                stack.enter_context(ModeSites(self.latent_sites()))
            with pyro.plate("batch", B, dim=-2):
                with pyro.plate("cells", G2, dim=-1):
                    logit = torch.logit(torch.tensor(cfg.pres_prior, device=self.where_loc.device))
                    z_pres = pyro.sample("z_pres", ConcreteBernoulli(logit.expand(B, G2), cfg.fg.pres_temperature))
                    with self.object_gate(z_pres):
                        z_where = pyro.sample("z_where", dist.Normal(self.where_loc, self.where_scale).expand([B, G2, 4]).to_event(1))
                        z_depth = pyro.sample("z_depth", dist.Normal(0.0, 1.0).expand([B, G2, cfg.fg.z_depth_dim]).to_event(1))
                        z_what = pyro.sample("z_what", dist.Normal(0.0, 1.0).expand([B, G2, cfg.fg.z_what_dim]).to_event(1))
                z_mask, z_comp = sample_components(self.mask_prior, self.comp_prior, cfg.num_components, (B, 1))
                options = render_options(RenderOptions(), name="render")
                weights, means = self.render(z_pres, z_where, z_depth, z_what, torch.cat(z_mask, -2), torch.cat(z_comp, -2), options)
                scales = torch.tensor([cfg.fg_sigma] + [cfg.bg_sigma] * cfg.num_components, device=means.device)
                likelihood = PixelMixture(weights.unsqueeze(-5), means.unsqueeze(-5), scales)
                pyro.sample("x", likelihood, obs=None if x is None else x.unsqueeze(-4))
        return likelihood.mean.squeeze(-4)

    @torch.no_grad()
    def sample(self, n: int, mode: bool = False) -> torch.Tensor:
        """``n`` scenes from the prior ``(n, C, H, W)`` (mean images)."""
        return self(batch_size=n, mode=mode)
