"""Amortised guide for :class:`pyro_scenes.SPACE` (Lin et al. 2020, section 3; docs/space.md)."""
from __future__ import annotations

import contextlib
from typing import Dict, Optional

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_scenes.gnm import ConcreteBernoulli, ModeSites
from pyro_scenes.gnm.networks import GaussianHead, ImageEncoder, ZsNetwork
from pyro_scenes.nn.subpixel import ConvStack
from pyro_scenes.space import SPACE
from pyro_scenes.space.networks import AutoregressiveGaussian, downsample


class FeatureEncoder(nn.Module):
    """Image-like input ``(..., C, H, W)`` -> feature vector: average-pooled to the background's
    side, then a strided conv stack, flattened."""

    def __init__(self, in_channels: int, cfg):
        super().__init__()
        self.factor = cfg.bg_downsample
        self.convs = ConvStack(in_channels, cfg.bg_enc_filters, cfg.bg_enc_kernels, cfg.bg_enc_strides)
        side = self.convs.output_size(cfg.bg_size)
        self.features = self.convs.out_channels * side * side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(downsample(x, self.factor)).flatten(-3)


class SPACEGuide(nn.Module):
    """q(z^fg | x) q(z^bg | x) for a :class:`~pyro_scenes.SPACE` model.

    * foreground (parallel over cells): GNM's image encoder and z^s network (``x -> f^x -> q(z^s)``);
    * background: q(z^m_k | x, z^m_<k) from an LSTM over image features and the previous mask
      latent; q(z^c_k | x, m_k) from the image and the model's stick-breaking mask m_k (decoded
      from z^m_1..k), as GENESIS.

    Sites and their order are the model's. The model is held by reference, not as a sub-module.
    """

    def __init__(self, model: SPACE):
        super().__init__()
        if not isinstance(model, SPACE):
            raise TypeError(f"SPACEGuide needs a pyro_scenes.SPACE model, got {type(model).__name__}")
        object.__setattr__(self, "model", model)
        cfg = self.cfg = model.cfg
        self.encoder = ImageEncoder(cfg.fg)
        self.zs_net = ZsNetwork(cfg.fg)
        self.bg_encoder = FeatureEncoder(cfg.channels, cfg)
        self.mask_posterior = AutoregressiveGaussian(self.bg_encoder.features, cfg.z_mask_dim, cfg.bg_hidden)
        self.comp_encoder = FeatureEncoder(cfg.channels + 1, cfg)
        self.comp_posterior = GaussianHead(self.comp_encoder.features, (cfg.bg_hidden,), cfg.z_comp_dim)

    def forward(self, x: torch.Tensor, batch_size: Optional[int] = None, mode: Optional[bool] = None):
        """Sample all latents given images ``x`` ``(B, C, H, W)`` (``mode=True``: posterior modes)."""
        if x is None:
            raise ValueError("SPACEGuide needs the images x")
        model, cfg = self.model, self.cfg
        B = model.check_input(x, batch_size, who="SPACEGuide")
        pyro.module("space_guide", self)
        p = self.zs_net(self.encoder(x))
        with contextlib.ExitStack() as stack:
            if mode:
                stack.enter_context(ModeSites())
            with pyro.plate("batch", B, dim=-2):
                with pyro.plate("cells", cfg.num_cells, dim=-1):
                    z_pres = pyro.sample("z_pres", ConcreteBernoulli(p["pres_logits"], cfg.fg.pres_temperature))
                    with model.object_gate(z_pres):
                        pyro.sample("z_where", dist.Normal(p["where_loc"], p["where_scale"]).to_event(1))
                        pyro.sample("z_depth", dist.Normal(p["depth_loc"], p["depth_scale"]).to_event(1))
                        pyro.sample("z_what", dist.Normal(p["what_loc"], p["what_scale"]).to_event(1))
                features = self.bg_encoder(x).unsqueeze(-2)  # (B, 1, F)
                state = self.mask_posterior.init_state((B, 1))
                scope = None
                for k in range(1, cfg.num_components + 1):
                    loc, scale, (h, c) = self.mask_posterior(state, features)
                    zm = pyro.sample(f"z_mask_{k}", dist.Normal(loc, scale).to_event(1))
                    mask, scope = self.mask_step(zm, scope, last=k == cfg.num_components)
                    inp = torch.cat([x.unsqueeze(-4).expand(mask.shape[:-3] + x.shape[-3:]), mask], -3)
                    loc, scale = self.comp_posterior(self.comp_encoder(inp))
                    pyro.sample(f"z_comp_{k}", dist.Normal(loc, scale).to_event(1))
                    state = (zm, h, c)
        return z_pres

    def mask_step(self, z_mask: torch.Tensor, scope: Optional[torch.Tensor], last: bool):
        """Mask m_k ``(..., 1, 1, H, W)`` and the remaining scope after step k (stick-breaking,
        :func:`~pyro_scenes.space.networks.stick_breaking`, one step at a time)."""
        logits = self.model.bg_decoders.mask_logits(z_mask)
        scope = torch.ones_like(logits) if scope is None else scope
        if last:
            return scope, torch.zeros_like(scope)
        inside = torch.sigmoid(logits)
        return scope * inside, scope * (1 - inside)

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Posterior summaries (no sampling): ``pres_prob``, ``pres_logits``, ``pres`` (> 0.5),
        ``boxes`` (pixels, from the mean z_where), ``z_where``, ``z_what``, ``z_depth`` per cell,
        as :meth:`guides.GNMGuide.infer`, and the background ``masks`` ``(B, K, 1, H, W)`` of the
        posterior-mean mask latents."""
        model, cfg = self.model, self.cfg
        model.check_input(x, who="SPACEGuide")
        p = self.zs_net(self.encoder(x))
        out = {"pres_prob": torch.sigmoid(p["pres_logits"]), "pres_logits": p["pres_logits"], "z_where": p["where_loc"],
               "z_what": p["what_loc"], "z_depth": p["depth_loc"]}
        out["pres"] = (out["pres_prob"] > 0.5).to(x.dtype)
        out["boxes"] = model.boxes(p["where_loc"])
        features = self.bg_encoder(x)
        state = self.mask_posterior.init_state((x.shape[0],))
        z_mask = []
        for _ in range(cfg.num_components):
            loc, _, (h, c) = self.mask_posterior(state, features)
            z_mask.append(loc)
            state = (loc, h, c)
        out["masks"] = model.masks(torch.stack(z_mask, -2))
        return out
