"""SPACE's background networks (Lin et al. 2020, section 3 and appendix; docs/space.md), GENESIS-style:

* :class:`MaskPrior` -- p(z^m_k | z^m_<k): an LSTM over the previous mask latents;
* :class:`ComponentPrior` -- p(z^c_k | z^m_k): an MLP;
* :class:`BackgroundDecoders` -- z^m_k -> mask logits, z^c_k -> component image, and the
  stick-breaking masks ``m_k = sigmoid(l_k) prod_{j<k} (1 - sigmoid(l_j))``, ``m_K`` the remainder.

All modules accept any leading dimensions (batch, particles, Predictive samples).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pyro_scenes.gnm.networks import GaussianHead
from pyro_scenes.nn.subpixel import SubPixelStack
from pyro_scenes.space.config import SPACEConfig


class LeadingLSTMCell(nn.LSTMCell):
    """``nn.LSTMCell`` on inputs with any leading dimensions."""

    def forward(self, x: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor]):
        h, c = torch.broadcast_tensors(*state)
        lead = torch.broadcast_shapes(x.shape[:-1], h.shape[:-1])
        x, h, c = (t.expand(lead + t.shape[-1:]).reshape(-1, t.shape[-1]) for t in (x, h, c))
        h, c = super().forward(x, (h, c))
        return h.reshape(lead + h.shape[-1:]), c.reshape(lead + c.shape[-1:])


class AutoregressiveGaussian(nn.Module):
    """``N(loc, scale)`` of step k from an LSTM state fed ``cat(context, z_<k-1>)``: the mask prior
    (no context) and the mask posterior (context: the image features)."""

    def __init__(self, context: int, dim: int, hidden: int):
        super().__init__()
        self.dim = dim
        self.lstm = LeadingLSTMCell(context + dim, hidden)
        self.head = GaussianHead(hidden, (hidden,), dim)
        self.h0 = nn.Parameter(torch.zeros(hidden))
        self.c0 = nn.Parameter(torch.zeros(hidden))

    def init_state(self, batch_shape) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(previous z, h, c)`` before step 1: zeros and the learned initial LSTM state."""
        shape = torch.Size(batch_shape)
        return self.h0.new_zeros(shape + (self.dim,)), self.h0.expand(shape + self.h0.shape), self.c0.expand(shape + self.c0.shape)

    def forward(self, state, context: torch.Tensor = None):
        z_prev, h, c = state
        inp = z_prev
        if context is not None:
            lead = torch.broadcast_shapes(context.shape[:-1], z_prev.shape[:-1])
            inp = torch.cat([context.expand(lead + context.shape[-1:]), z_prev.expand(lead + z_prev.shape[-1:])], -1)
        h, c = self.lstm(inp, (h, c))
        loc, scale = self.head(h)
        return loc, scale, (h, c)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``(..., C, h, w)`` to ``size x size`` (identity at the same size)."""
    if x.shape[-1] == size:
        return x
    flat = x.reshape((-1,) + x.shape[-3:])
    out = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False)
    return out.reshape(x.shape[:-2] + (size, size))


def downsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average-pool ``(..., C, H, W)`` by ``factor``."""
    if factor == 1:
        return x
    flat = x.reshape((-1,) + x.shape[-3:])
    out = F.avg_pool2d(flat, factor)
    return out.reshape(x.shape[:-2] + out.shape[-2:])


class BackgroundDecoders(nn.Module):
    """z^m_k -> mask logits ``(..., 1, H, W)`` and z^c_k -> component means ``(..., C, H, W)``:
    sub-pixel stacks from 1x1 to the background's side (sigmoid means), upsampled bilinearly."""

    def __init__(self, cfg: SPACEConfig):
        super().__init__()
        self.image_size = cfg.image_size
        n = len(cfg.bg_filters)
        groups = [1] * (n - 1) + [0]
        self.mask = SubPixelStack(cfg.z_mask_dim, list(cfg.bg_filters) + [1], list(cfg.bg_kernels) + [3],
                                  list(cfg.bg_upscales) + [1], groups=groups + [0])
        self.component = SubPixelStack(cfg.z_comp_dim, list(cfg.bg_filters) + [cfg.channels], list(cfg.bg_kernels) + [3],
                                       list(cfg.bg_upscales) + [1], groups=groups + [0])

    def mask_logits(self, z_mask: torch.Tensor) -> torch.Tensor:
        return resize(self.mask(z_mask[..., None, None]), self.image_size)

    def component_means(self, z_comp: torch.Tensor) -> torch.Tensor:
        return resize(torch.sigmoid(self.component(z_comp[..., None, None])), self.image_size)


def stick_breaking(logits: torch.Tensor) -> torch.Tensor:
    """Mask logits ``(..., K, 1, H, W)`` -> masks summing to 1 over K: ``m_k = sigmoid(l_k) *
    prod_{j<k} (1 - sigmoid(l_j))`` for k < K, ``m_K = prod_{j<K} (1 - sigmoid(l_j))`` (l_K unused)."""
    K = logits.shape[-4]
    log_in = torch.nn.functional.logsigmoid(logits[..., : K - 1, :, :, :])
    log_out = torch.nn.functional.logsigmoid(-logits[..., : K - 1, :, :, :])
    zeros = torch.zeros_like(logits[..., :1, :, :, :])
    log_scope = torch.cat([zeros, log_out.cumsum(-4)], -4)  # log prod_{j<k} (1 - sigmoid(l_j)), k = 1..K
    return torch.exp(log_scope + torch.cat([log_in, zeros], -4))


class ComponentPrior(GaussianHead):
    """p(z^c_k | z^m_k) = N(MLP(z^m_k))."""

    def __init__(self, cfg: SPACEConfig):
        super().__init__(cfg.z_mask_dim, (cfg.bg_hidden,), cfg.z_comp_dim)
