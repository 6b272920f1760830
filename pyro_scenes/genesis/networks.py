"""GENESIS's networks that SPACE's background does not already provide (Engelcke et al. 2019 and
its official code; docs/genesis.md):

* :class:`MaskDecoder` -- z^m_k -> mask logits at the image's full resolution (a sub-pixel stack
  from 1x1, as GENESIS decodes its masks from the latent);
* :class:`BroadcastDecoder` -- z^c_k -> component image: the spatial-broadcast decoder (Watters
  et al. 2019) of GENESIS's component VAE, with the GNM supplement's 3 layers;
* :class:`ConvEncoder` -- image-like input -> feature vector: the image encoder of the mask
  posterior q(z^m | x) and the component encoder of q(z^c_k | x, m_k).

The mask prior and posterior (:class:`~pyro_scenes.space.networks.AutoregressiveGaussian`), the
stick-breaking masks (:func:`~pyro_scenes.space.networks.stick_breaking`), the likelihood
(:class:`~pyro_scenes.space.distributions.PixelMixture`) and the Gaussian heads
(:class:`~pyro_scenes.gnm.networks.GaussianHead`) are SPACE's and GNM's. All modules accept any
leading dimensions (batch, particles, Predictive samples).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyro_scenes.nn.mlp import MLP, make_activation
from pyro_scenes.nn.subpixel import ConvStack, SubPixelStack
from pyro_scenes.space.networks import resize


class MaskDecoder(SubPixelStack):
    """z^m_k ``(..., D)`` -> mask logits ``(..., 1, H, W)``: sub-pixel layers from 1x1 (CELU and
    GroupNorm(1) between layers, none after the last, 1-channel one)."""

    def __init__(self, cfg):
        n = len(cfg.mask_filters)
        super().__init__(cfg.z_mask_dim, cfg.mask_filters, cfg.mask_kernels, cfg.mask_upscales, groups=[1] * (n - 1) + [0])

    def forward(self, z_mask: torch.Tensor) -> torch.Tensor:
        return super().forward(z_mask[..., None, None])


def coordinate_channels(side: int) -> torch.Tensor:
    """``(2, side, side)``: the row and column coordinates, each in [-1, 1]."""
    line = torch.linspace(-1.0, 1.0, side)
    rows, cols = torch.meshgrid(line, line, indexing="ij")
    return torch.stack([rows, cols])


class BroadcastDecoder(nn.Module):
    """Spatial-broadcast decoder: ``z (..., D)`` -> ``(..., out_channels, size, size)`` (logits).

    z is tiled over a ``(size + 2L) x (size + 2L)`` grid and concatenated with 2 coordinate
    channels; L unpadded 3x3 convolutions (``activation`` after each) bring it to ``size``, a 1x1
    convolution to ``out_channels``.

    The first convolution sees a spatially constant z, so (without padding) its z part is the same
    linear map of z at every pixel: it is computed as ``sum_ij W[:, :D, i, j] @ z`` plus the
    convolution of the coordinate channels (one map, shared by all inputs) -- the values of the
    convolution of the tiled input, at a fraction of its cost.
    """

    def __init__(self, z_dim: int, out_channels: int, hidden: int, layers: int, size: int, activation: str = "elu"):
        super().__init__()
        self.z_dim, self.size, self.layers = int(z_dim), int(size), int(layers)
        self.register_buffer("coords", coordinate_channels(self.size + 2 * self.layers), persistent=False)
        self.first = nn.Conv2d(self.z_dim + 2, hidden, 3)
        rest = [make_activation(activation)]
        for _ in range(self.layers - 1):
            rest += [nn.Conv2d(hidden, hidden, 3), make_activation(activation)]
        rest.append(nn.Conv2d(hidden, out_channels, 1))
        self.rest = nn.Sequential(*rest)

    def tiled(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's input: z tiled and concatenated with the coordinates ``(..., D + 2, S + 2L, S + 2L)``
        (not used by :meth:`forward`, which never builds it; for tests and reading)."""
        side = self.coords.shape[-1]
        tiled = z[..., None, None].expand(z.shape + (side, side))
        return torch.cat([tiled, self.coords.expand(z.shape[:-1] + self.coords.shape)], -3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.first.weight
        from_z = z @ w[:, : self.z_dim].sum((-2, -1)).t()  # (..., hidden)
        from_coords = F.conv2d(self.coords.unsqueeze(0), w[:, self.z_dim:], self.first.bias)  # (1, hidden, s, s)
        h = from_z.reshape(-1, from_z.shape[-1], 1, 1) + from_coords
        out = self.rest(h)
        return out.reshape(z.shape[:-1] + out.shape[-3:])


class ComponentDecoder(BroadcastDecoder):
    """z^c_k ``(..., D)`` -> component means ``(..., C, H, W)`` in [0, 1]: the broadcast decoder at
    ``cfg.comp_size``, a sigmoid, then bilinear upsampling to the image's side (none at
    ``comp_downsample = 1``)."""

    def __init__(self, cfg):
        super().__init__(cfg.z_comp_dim, cfg.channels, cfg.comp_dec_channels, cfg.comp_dec_layers, cfg.comp_size)
        self.image_size = cfg.image_size

    def forward(self, z_comp: torch.Tensor) -> torch.Tensor:
        return resize(torch.sigmoid(super().forward(z_comp)), self.image_size)


class ConvEncoder(nn.Module):
    """Image-like input ``(..., C, H, W)`` -> features ``(..., F)``: ``Conv -> CELU -> GroupNorm(1)``
    layers, flattened, then (``features`` given) a linear layer with CELU and LayerNorm."""

    def __init__(self, in_channels: int, filters: Sequence[int], kernels: Sequence[int], strides: Sequence[int],
                 image_size: int, features: Optional[int] = None):
        super().__init__()
        self.convs = ConvStack(in_channels, filters, kernels, strides, groups=1, norm_act_final=True)
        side = self.convs.output_size(image_size)
        self.features = flat = self.convs.out_channels * side * side
        self.mlp = None
        if features is not None:
            self.mlp = MLP(flat, [features], norm_act_final=True)
            self.features = int(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.convs(x).flatten(-3)
        return h if self.mlp is None else self.mlp(h)
