"""The three networks of an ECON expert (appendix C.2), stacked over K experts.

* :class:`ExpertAttention` - U-Net attention net a_k(x, s) (C.2.2, as in MONet / GENESIS);
* :class:`ExpertEncoder` - VAE encoder g_k(x, r) -> (mean, log-variance) (C.2.1);
* :class:`ExpertDecoder` - spatial-broadcast decoder f_k(z) -> (appearance mean, shape probs) (C.2.1).

All run the K experts in one batched pass (see :mod:`pyro_scenes.nn.experts`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pyro_scenes.nn.experts import ExpertConv2d, ExpertLinear, merge_experts, split_experts


def _instance_relu(x: torch.Tensor) -> torch.Tensor:
    """Instance norm (no affine, per expert and channel) then ReLU on ``(N, K, C, H, W)``."""
    return F.relu(split_experts(F.instance_norm(merge_experts(x)), x.shape[1]))


def _resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Nearest-neighbour resize of ``(N, K, C, H, W)`` by ``factor``."""
    y = F.interpolate(merge_experts(x), scale_factor=factor, mode="nearest")
    return split_experts(y, x.shape[1])


class ExpertAttention(nn.Module):
    """U-Net a_k(x, s) -> attention logits, K experts at once (appendix C.2.2).

    ``blocks`` down blocks (3x3 conv, instance norm, ReLU, nearest 2x down-sampling) with
    ``filters * (1, 2, 2, ...)`` channels (the paper's 4-32-64-64-64 for ``filters=32``), an MLP
    bottleneck (128-128) and a symmetric up path with skip connections, then a 1x1 conv to one
    logit per pixel. The region probability is ``s * sigmoid(logit)`` (see :class:`guides.ECONGuide`).
    """

    def __init__(self, num_experts: int, in_channels: int, image_size: int, filters: int = 32, blocks: int = 4, bottleneck: int = 128):
        super().__init__()
        if image_size % 2 ** (blocks - 1):
            raise ValueError(f"image_size {image_size} must be divisible by 2**(blocks-1) = {2 ** (blocks - 1)}")
        K, c = num_experts, filters
        enc_out = [c] + [2 * c] * (blocks - 1)
        enc_in = [in_channels] + enc_out[:-1]
        dec_out = [2 * c] * (blocks - 2) + [c, c]
        dec_in = [2 * enc_out[-1]] + [dec_out[i] + enc_out[-2 - i] for i in range(blocks - 1)]
        self.down = nn.ModuleList(ExpertConv2d(K, i, o, 3, padding=1) for i, o in zip(enc_in, enc_out))
        self.up = nn.ModuleList(ExpertConv2d(K, i, o, 3, padding=1) for i, o in zip(dec_in, dec_out))
        self.fmap = image_size // 2 ** (blocks - 1)
        flat = enc_out[-1] * self.fmap ** 2
        self.mlp = nn.ModuleList([ExpertLinear(K, flat, bottleneck), ExpertLinear(K, bottleneck, bottleneck), ExpertLinear(K, bottleneck, flat)])
        self.out = ExpertConv2d(K, c, 1, 1)
        self.num_experts = K

    def forward(self, x: torch.Tensor, scope: torch.Tensor, experts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` (N,C,H,W), ``scope`` (N,1,H,W) -> logits (N,K,1,H,W), or (N,1,H,W) from expert
        ``experts[n]`` for item n when ``experts`` (N,) is given."""
        h = torch.cat([x, scope], dim=1)  # shared by all experts: the first conv is a plain conv
        select = experts is not None
        norm_relu = (lambda a: F.relu(F.instance_norm(a))) if select else _instance_relu
        resize = (lambda a, f: F.interpolate(a, scale_factor=f, mode="nearest")) if select else _resize
        skips = []
        for i, conv in enumerate(self.down):
            h = norm_relu(conv(h, experts=experts))
            skips.append(h)
            if i < len(self.down) - 1:
                h = resize(h, 0.5)
        shape = h.shape
        flat = h.reshape(shape[0], -1) if select else h.reshape(*shape[:2], -1)
        for lin in self.mlp:
            flat = F.relu(lin(flat, experts=experts))
        h = flat.reshape(shape)
        channel_dim = 1 if select else 2
        for i, conv in enumerate(self.up):
            h = norm_relu(conv(torch.cat([h, skips[-1 - i]], dim=channel_dim), experts=experts))
            if i < len(self.up) - 1:
                h = resize(h, 2.0)
        return self.out(h, experts=experts)


class ExpertEncoder(nn.Module):
    """g_k(x, r) -> (mean, log-variance) of q(z | x, r, k), K experts at once (appendix C.2.1).

    ``layers`` blocks of (3x3 conv, ReLU, 2x2 max-pool) with ``features`` channels, flatten,
    FC to ``4 * latent_dim`` with ReLU, FC to ``2 * latent_dim``.
    """

    def __init__(self, num_experts: int, in_channels: int, image_size: int, latent_dim: int, features: int = 32, layers: int = 4):
        super().__init__()
        if image_size % 2 ** layers:
            raise ValueError(f"image_size {image_size} must be divisible by 2**layers = {2 ** layers}")
        K = num_experts
        self.convs = nn.ModuleList(ExpertConv2d(K, in_channels if i == 0 else features, features, 3, padding=1) for i in range(layers))
        flat = features * (image_size // 2 ** layers) ** 2
        self.fc1 = ExpertLinear(K, flat, 4 * latent_dim)
        self.fc2 = ExpertLinear(K, 4 * latent_dim, 2 * latent_dim)
        self.latent_dim = latent_dim

    def forward(self, x: torch.Tensor, regions: torch.Tensor, experts: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``x`` (N,C,H,W), ``regions`` (N,K,1,H,W) -> mean, log-variance, each (N,K,L); or with
        ``experts`` (N,) and ``regions`` (N,1,H,W): expert ``experts[n]`` on item n -> (N,L) each."""
        if experts is not None:
            h = torch.cat([x, regions], dim=1)
            for conv in self.convs:
                h = F.max_pool2d(F.relu(conv(h, experts=experts)), 2)
            h = self.fc2(F.relu(self.fc1(h.reshape(h.shape[0], -1), experts=experts)), experts=experts)
        else:
            n, K = regions.shape[:2]
            h = torch.cat([x.unsqueeze(1).expand(n, K, *x.shape[1:]), regions], dim=2)
            for conv in self.convs:
                h = split_experts(F.max_pool2d(F.relu(merge_experts(conv(h))), 2), K)
            h = self.fc2(F.relu(self.fc1(h.reshape(n, K, -1))))
        return h[..., : self.latent_dim], h[..., self.latent_dim :]


class ExpertDecoder(nn.Module):
    """Spatial-broadcast decoder f_k(z) -> (mu, m~) (appendix C.2.1, Watters et al. 2019).

    z is tiled over the image grid, two coordinate channels are appended, ``layers`` blocks of
    (3x3 conv, ReLU) with ``features`` channels follow, then a 1x1 conv with sigmoid gives
    ``channels`` appearance means and one unoccluded-shape probability per pixel.
    """

    def __init__(self, num_experts: int, latent_dim: int, image_size: int, channels: int = 3, features: int = 32, layers: int = 4):
        super().__init__()
        K = num_experts
        self.convs = nn.ModuleList(ExpertConv2d(K, latent_dim + 2 if i == 0 else features, features, 3, padding=1) for i in range(layers))
        self.out = ExpertConv2d(K, features, channels + 1, 1)
        lin = torch.linspace(-1.0, 1.0, image_size)
        self.register_buffer("coords", torch.stack(torch.meshgrid(lin, lin, indexing="ij")), persistent=False)
        self.num_experts, self.latent_dim, self.image_size, self.channels = K, latent_dim, image_size, channels

    def _broadcast(self, z: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        tiled = z[..., None, None].expand(*z.shape, size, size)
        coords = self.coords.expand(*z.shape[:-1], 2, size, size)
        return torch.cat([tiled, coords], dim=-3)

    def forward(self, z: torch.Tensor, experts: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Decode.

        * ``experts=None``: ``z`` (N,K,L) -> mu (N,K,C,H,W), shape probs (N,K,1,H,W);
        * ``experts`` (...): ``z`` (..., L) -> mu (..., C, H, W), shape probs (..., 1, H, W),
          item i decoded by expert ``experts[i]`` (any leading batch shape, broadcast).
        """
        if experts is None:
            h = self._broadcast(z)
            for conv in self.convs:
                h = F.relu(conv(h))
            out = torch.sigmoid(self.out(h))
            return out[:, :, : self.channels], out[:, :, self.channels :]
        batch = torch.broadcast_shapes(z.shape[:-1], experts.shape)
        flat_z = z.expand(*batch, z.shape[-1]).reshape(-1, z.shape[-1])
        flat_k = experts.expand(batch).reshape(-1)
        h = self._broadcast(flat_z)
        for conv in self.convs:
            h = F.relu(conv(h, experts=flat_k))
        out = torch.sigmoid(self.out(h, experts=flat_k)).reshape(*batch, self.channels + 1, self.image_size, self.image_size)
        return out[..., : self.channels, :, :], out[..., self.channels :, :, :]
