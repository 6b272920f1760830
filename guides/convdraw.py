"""Amortised guide for :class:`pyro_scenes.ConvDRAW` (GNM supplement section 4.2)."""
from __future__ import annotations

import contextlib
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_scenes.convdraw import ConvDRAW, ConvGaussianHead
from pyro_scenes.gnm.handlers import ModeSites
from pyro_scenes.nn.convlstm import ConvLSTMCell, broadcast_cat
from pyro_scenes.nn.subpixel import ConvStack


class ConvDRAWGuide(nn.Module):
    """q(z_1..L | x): GNM's image encoder (supplement Table 4) to f^x (C x G x G); then per step
    ``h_enc,l = ConvLSTM_enc(cat[h_dec,l-1, f^x, f^x - f_l-1])`` and
    ``q(z_l | x, z_<l) = N(CNN_post(h_enc,l))``, run together with the model's own decoder core,
    which turns each posterior sample into ``h_dec,l`` and the canvas ``f_l`` (as StructDRAW's guide).

    The model is held by reference, not as a sub-module.
    """

    def __init__(self, model: ConvDRAW):
        super().__init__()
        if not isinstance(model, ConvDRAW):
            raise TypeError(f"ConvDRAWGuide needs a pyro_scenes.ConvDRAW model, got {type(model).__name__}")
        object.__setattr__(self, "model", model)
        cfg = self.cfg = model.cfg
        C = cfg.hidden
        self.encoder = ConvStack(cfg.channels, cfg.enc_filters, cfg.enc_kernels, cfg.enc_strides, groups=1, norm_act_final=True)
        self.lstm = ConvLSTMCell(3 * C, C, cfg.lstm_kernel, cfg.grid)
        self.posterior_net = ConvGaussianHead(C, cfg.head_filters, cfg.z_channels, cfg.head_kernel)

    def forward(self, x: torch.Tensor, batch_size: Optional[int] = None, mode: bool = False):
        """Sample z_1..L given images ``x`` ``(B, C, H, W)`` (``mode=True``: each at its posterior mean)."""
        if x is None:
            raise ValueError("ConvDRAWGuide needs the images x")
        model = self.model
        B = model.check_input(x, batch_size, who="ConvDRAWGuide")
        pyro.module("convdraw_guide", self)
        fx = self.encoder(x)
        names = model.latent_sites()
        with ModeSites(names) if mode else contextlib.nullcontext():
            with pyro.plate("batch", B, dim=-1):
                dec = model.draw.init_state((B,))
                enc = self.lstm.init_state((B,))
                for l, name in enumerate(names, start=1):
                    enc = self.lstm(broadcast_cat([dec[0], fx, fx - dec[2]], -3), enc)
                    loc, scale = self.posterior_net(enc[0])
                    z = pyro.sample(name, dist.Normal(loc, scale).to_event(3))
                    if l < len(names):  # the last canvas update is not needed by q
                        dec = model.draw.step(z, dec)
        return z
