"""Amortised guide for :class:`pyro_scenes.GENESIS` (Engelcke et al. 2019; docs/genesis.md)."""
from __future__ import annotations

import contextlib
from typing import Dict, Optional

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_scenes.genesis import GENESIS
from pyro_scenes.genesis.networks import ConvEncoder
from pyro_scenes.gnm.handlers import ModeSites
from pyro_scenes.gnm.networks import GaussianHead
from pyro_scenes.space.networks import AutoregressiveGaussian


class GENESISGuide(nn.Module):
    """GENESIS's posterior ``q(z | x) = prod_k q(z^m_k | x, z^m_<k) q(z^c_k | x, z^m_1..k)`` for a
    :class:`~pyro_scenes.GENESIS` model.

    * q(z^m_k | x, z^m_<k): an image encoder (:class:`~pyro_scenes.genesis.networks.ConvEncoder`)
      to a feature vector, then an LSTM fed the features and the previous mask latent
      (:class:`~pyro_scenes.space.networks.AutoregressiveGaussian`), as GENESIS's mask inference;
    * q(z^c_k | x, z^m_1..k) = q(z^c_k | x, m_k): a component encoder on ``cat(x, m_k)`` and a Gaussian head, m_k the
      stick-breaking mask decoded from the guide's z^m_1..k by the **model's** mask decoder (as
      GENESIS and :class:`guides.SPACEGuide`).

    Sites and their order are the model's. The model is held by reference, not as a sub-module.
    """

    def __init__(self, model: GENESIS):
        super().__init__()
        if not isinstance(model, GENESIS):
            raise TypeError(f"GENESISGuide needs a pyro_scenes.GENESIS model, got {type(model).__name__}")
        object.__setattr__(self, "model", model)
        cfg = self.cfg = model.cfg
        self.encoder = ConvEncoder(cfg.channels, cfg.enc_filters, cfg.enc_kernels, cfg.enc_strides, cfg.image_size,
                                   features=cfg.enc_features)
        self.mask_posterior = AutoregressiveGaussian(self.encoder.features, cfg.z_mask_dim, cfg.mask_posterior_hidden)
        self.comp_encoder = ConvEncoder(cfg.channels + 1, cfg.comp_enc_filters, cfg.comp_enc_kernels, cfg.comp_enc_strides,
                                        cfg.image_size)
        self.comp_posterior = GaussianHead(self.comp_encoder.features, cfg.comp_enc_hidden, cfg.z_comp_dim)

    def forward(self, x: torch.Tensor, batch_size: Optional[int] = None, mode: Optional[bool] = None):
        """Sample all latents given images ``x`` ``(B, C, H, W)`` (``mode=True``: posterior modes);
        returns the masks ``(..., B, K, 1, H, W)``."""
        if x is None:
            raise ValueError("GENESISGuide needs the images x")
        model, cfg = self.model, self.cfg
        B = model.check_input(x, batch_size, who="GENESISGuide")
        pyro.module("genesis_guide", self)
        features = self.encoder(x)  # (B, F)
        masks = []
        with contextlib.ExitStack() as stack:
            if mode:
                stack.enter_context(ModeSites())
            with pyro.plate("batch", B, dim=-1):
                state = self.mask_posterior.init_state((B,))
                scope = None
                for k in range(1, cfg.num_components + 1):
                    loc, scale, (h, c) = self.mask_posterior(state, features)
                    zm = pyro.sample(f"z_mask_{k}", dist.Normal(loc, scale).to_event(1))
                    mask, scope = self.mask_step(zm, scope, last=k == cfg.num_components)
                    inp = torch.cat([x.expand(mask.shape[:-3] + x.shape[-3:]), mask], -3)
                    loc, scale = self.comp_posterior(self.comp_encoder(inp))
                    pyro.sample(f"z_comp_{k}", dist.Normal(loc, scale).to_event(1))
                    masks.append(mask)
                    state = (zm, h, c)
        return torch.stack(torch.broadcast_tensors(*masks), -4)

    def mask_step(self, z_mask: torch.Tensor, scope: Optional[torch.Tensor], last: bool):
        """Mask m_k ``(..., 1, H, W)`` and the remaining scope after step k (the stick-breaking of
        :func:`~pyro_scenes.space.networks.stick_breaking`, one step at a time)."""
        if last:  # m_K is the remaining scope; its logits are not used
            scope = torch.ones(z_mask.shape[:-1] + (1, self.cfg.image_size, self.cfg.image_size), dtype=z_mask.dtype,
                               device=z_mask.device) if scope is None else scope
            return scope, torch.zeros_like(scope)
        inside = torch.sigmoid(self.model.mask_logits(z_mask))
        if scope is None:
            return inside, 1 - inside
        return scope * inside, scope * (1 - inside)

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Posterior summaries (no sampling): the posterior-mean latents ``z_mask``
        ``(B, K, D_m)``, ``z_comp`` ``(B, K, D_c)``, the ``masks`` ``(B, K, 1, H, W)`` and
        ``components`` ``(B, K, C, H, W)`` they decode to, and the ``reconstruction`` ``(B, C, H, W)``."""
        trace = pyro.poutine.trace(self).get_trace(x, mode=True)
        K = self.cfg.num_components
        z_mask = torch.stack([trace.nodes[f"z_mask_{k}"]["value"] for k in range(1, K + 1)], -2)
        z_comp = torch.stack([trace.nodes[f"z_comp_{k}"]["value"] for k in range(1, K + 1)], -2)
        masks, components = self.model.render(z_mask, z_comp)
        return {"z_mask": z_mask, "z_comp": z_comp, "masks": masks, "components": components,
                "reconstruction": (masks * components).sum(-4)}
