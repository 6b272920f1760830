"""GNM's networks (Jiang & Ahn 2020, supplement Tables 4-7, as the authors configured them; docs/gnm.md).

All modules accept any leading dimensions (batch, particles, Predictive samples).
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pyro_scenes.gnm.config import GNMConfig
from pyro_scenes.nn.convlstm import ConvLSTMCell, broadcast_cat
from pyro_scenes.nn.mlp import MLP
from pyro_scenes.nn.subpixel import ConvStack, SubPixelStack


def flatten_map(h: torch.Tensor) -> torch.Tensor:
    """``(..., C, G, G) -> (..., G*G*C)`` in (row, column, channel) order, as the authors flatten."""
    return h.movedim(-3, -1).flatten(-3)


def to_cells(t: torch.Tensor) -> torch.Tensor:
    """``(..., k, G, G) -> (..., G*G, k)``; cell index = row * G + column."""
    return t.movedim(-3, -1).flatten(-3, -2)


class ImageEncoder(ConvStack):
    """Supplement Table 4: 9 convs, each followed by CELU and GroupNorm(1): image -> f^x (C x G x G)."""

    def __init__(self, cfg: GNMConfig):
        super().__init__(cfg.channels, cfg.enc_filters, cfg.enc_kernels, cfg.enc_strides, groups=1, norm_act_final=True)


class GaussianHead(nn.Module):
    """MLP -> (mean, softplus std), split in halves of the last layer."""

    def __init__(self, in_features: int, hidden, dim: int):
        super().__init__()
        self.mlp = MLP(in_features, list(hidden) + [2 * dim], norm_act_final=False)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mean, std = self.mlp(x).chunk(2, -1)
        return mean, F.softplus(std)


class StructDRAW(nn.Module):
    """The generative path of StructDRAW (Algorithm 1): everything but the encoder ConvLSTM and
    ``MLP^int_enc``, which belong to the guide.

    * :meth:`prior` -- ``p(z^g_l) = N(MLP^int_dec(h_dec,l-1))``;
    * :meth:`step` -- ``d_l = MLP^g_dec(z^g_l)``; ``h_dec,l = ConvLSTM_dec(cat[d_l, f_l-1])``;
      ``f_l = f_l-1 + CNN_out(h_dec,l)``. As in the authors' code the decoder ConvLSTM also sees the
      current canvas ``f_l-1`` (Algorithm 1 omits it; the parameter counts require it).

    The guide runs :meth:`step` on its samples z^g_1..L-1 (it needs ``h_dec`` and the canvas for
    the next posterior step) and the model runs it again on the same values: the states pass
    between them only through the sample sites (reusing the guide's states saves 1-7% of an SVI
    step: docs/gnm.md, "The guide").
    """

    def __init__(self, cfg: GNMConfig):
        super().__init__()
        C, G = cfg.hidden, cfg.grid
        self.cfg = cfg
        self.prior_net = GaussianHead(G * G * C, cfg.draw_mlp, cfg.z_g_dim)
        self.g_decoder = MLP(cfg.z_g_dim, list(cfg.g_dec_mlp) + [G * G * C], norm_act_final=True)
        self.lstm = ConvLSTMCell(2 * C, C, cfg.lstm_kernel, G)
        self.out_cnn = nn.Conv2d(C, C, cfg.out_kernel, padding=(cfg.out_kernel - 1) // 2)

    def init_state(self, batch_shape) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(h_dec,0, c_dec,0, f_0)``: the learned initial LSTM state and an empty canvas."""
        h, c = self.lstm.init_state(batch_shape)
        return h, c, torch.zeros_like(h)

    def prior(self, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.prior_net(flatten_map(h))

    def step(self, z_g: torch.Tensor, state):
        h, c, f = state
        C, G = self.cfg.hidden, self.cfg.grid
        d = self.g_decoder(z_g)
        d = d.reshape(d.shape[:-1] + (C, G, G))
        h, c = self.lstm(broadcast_cat([d, f], -3), (h, c))
        lead = h.shape[:-3]
        f = f + self.out_cnn(h.reshape((-1,) + h.shape[-3:])).reshape(lead + h.shape[-3:])
        return h, c, f


class StructDRAWEncoder(nn.Module):
    """The inference path of StructDRAW: ``ConvLSTM_enc(cat[h_dec,l-1, f^x, f^x - f_l-1])`` and
    ``q(z^g_l) = N(MLP^int_enc(h_enc,l))``."""

    def __init__(self, cfg: GNMConfig):
        super().__init__()
        C, G = cfg.hidden, cfg.grid
        self.lstm = ConvLSTMCell(3 * C, C, cfg.lstm_kernel, G)
        self.posterior_net = GaussianHead(G * G * C, cfg.draw_mlp, cfg.z_g_dim)

    def init_state(self, batch_shape):
        return self.lstm.init_state(batch_shape)

    def forward(self, fx: torch.Tensor, dec_state, enc_state):
        h_dec, _, f = dec_state
        inp = broadcast_cat([h_dec, fx, fx - f], -3)
        h, c = self.lstm(inp, enc_state)
        mean, std = self.posterior_net(flatten_map(h))
        return mean, std, (h, c)


class ZsNetwork(nn.Module):
    """The one network for both p(z^s | f) and q(z^s | f^x) (supplement Table 7 ``StackConv``; docs/gnm.md, "z^s network").

    Two 1x1 convs (CELU + GroupNorm) then 1x1 heads. Returns per-cell parameters (``(..., G*G, k)``):
    ``pres_logits`` (8.8 * tanh), ``where_loc/where_scale`` (raw: scale logit, log ratio, shift x, y),
    ``depth_loc/depth_scale``, ``what_loc/what_scale`` (softplus scales).
    """

    def __init__(self, cfg: GNMConfig):
        super().__init__()
        C = cfg.hidden
        self.cfg = cfg
        self.body = ConvStack(C, cfg.zs_filters, [1] * len(cfg.zs_filters), groups=1, norm_act_final=True)
        k = self.body.out_channels
        self.pres_head = nn.Conv2d(k, 1, 1)
        self.where_head = nn.Conv2d(k, 8, 1)
        self.depth_head = nn.Conv2d(k, 2 * cfg.z_depth_dim, 1)
        self.what_head = nn.Conv2d(k, 2 * cfg.z_what_dim, 1)
        with torch.no_grad():
            r = cfg.where_init_range
            self.where_head.weight.uniform_(-r, r)
            self.where_head.bias.zero_()
            self.where_head.bias[0] = cfg.where_scale_bias

    def forward(self, feat: torch.Tensor) -> Dict[str, torch.Tensor]:
        lead = feat.shape[:-3]
        e = self.body(feat)
        e = e.reshape((-1,) + e.shape[-3:])

        def head(conv):
            out = conv(e)
            return to_cells(out.reshape(lead + out.shape[-3:]))

        pres = head(self.pres_head).squeeze(-1)
        where_loc, where_scale = head(self.where_head).chunk(2, -1)
        depth_loc, depth_scale = head(self.depth_head).chunk(2, -1)
        what_loc, what_scale = head(self.what_head).chunk(2, -1)
        return {
            "pres_logits": torch.tanh(pres) * self.cfg.pres_logit_scale,
            "where_loc": where_loc,
            "where_scale": F.softplus(where_scale),
            "depth_loc": depth_loc,
            "depth_scale": F.softplus(depth_scale),
            "what_loc": what_loc,
            "what_scale": F.softplus(what_scale),
        }


class GlimpseDecoder(nn.Module):
    """z_what -> glimpse (supplement Table 5): sub-pixel stack from 1x1, sigmoid outputs.

    Returns ``(appearance, alpha)``; without an alpha channel (MNIST) alpha is ``None`` (= 1).
    """

    def __init__(self, cfg: GNMConfig):
        super().__init__()
        self.cfg = cfg
        n = len(cfg.glimpse_filters)
        self.net = SubPixelStack(cfg.z_what_dim, cfg.glimpse_filters, cfg.glimpse_kernels, cfg.glimpse_upscales, groups=[1] * (n - 1) + [0])

    def forward(self, z_what: torch.Tensor):
        out = torch.sigmoid(self.net(z_what[..., None, None]))
        if self.cfg.alpha:
            return out[..., : self.cfg.channels, :, :], out[..., self.cfg.channels :, :, :]
        return out, None


class BackgroundDecoder(nn.Module):
    """z_bg -> background image (Table 6): sub-pixel stack from 1x1, sigmoid."""

    def __init__(self, cfg: GNMConfig):
        super().__init__()
        self.net = SubPixelStack(cfg.z_bg_dim, cfg.bg_filters, cfg.bg_kernels, cfg.bg_upscales, groups=1)

    def forward(self, z_bg: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z_bg[..., None, None]))
