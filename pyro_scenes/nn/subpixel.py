"""Convolution stacks on image-like tensors with any leading dimensions.

* :class:`ConvStack`: ``Conv2d -> activation -> GroupNorm`` blocks (GNM's image encoder, its z^s
  network and StructDRAW's output CNN).
* :class:`SubPixelStack`: sub-pixel convolutions (Shi et al. 2016): a convolution to ``f * u^2``
  channels then ``PixelShuffle(u)``, each block followed by ``activation -> GroupNorm`` (GNM's
  glimpse and background decoders, supplement Tables 5 and 6).

Both apply to tensors of shape ``(..., C, H, W)``; leading dimensions are flattened for the
convolutions and restored afterwards. :class:`SubPixelStack` works in channels-last memory format
(its small-channel convolutions are 2-3x faster that way on CPU) with a channels-last pixel
shuffle (:func:`pixel_shuffle`); values are those of ``torch.nn.PixelShuffle``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from pyro_scenes.nn.mlp import make_activation


def _flat4(x: torch.Tensor):
    lead = x.shape[:-3]
    return x.reshape((-1,) + x.shape[-3:]), lead


def _group_norm(groups: Optional[int], channels: int) -> nn.Module:
    if not groups:
        return nn.Identity()
    return nn.GroupNorm(int(groups), channels)


def pixel_shuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """``torch.nn.functional.pixel_shuffle(x, r)`` for ``(N, C*r*r, H, W)``, returned in channels-last
    memory format (one copy; faster than the native kernel on CPU, forward and backward)."""
    N, Crr, H, W = x.shape
    C = Crr // (r * r)
    y = x.permute(0, 2, 3, 1).reshape(N, H, W, C, r, r).permute(0, 1, 4, 2, 5, 3).reshape(N, H * r, W * r, C)
    return y.permute(0, 3, 1, 2)


class PixelShuffle(nn.Module):
    """Module form of :func:`pixel_shuffle` (no parameters, like ``torch.nn.PixelShuffle``)."""

    def __init__(self, upscale_factor: int):
        super().__init__()
        self.upscale_factor = int(upscale_factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle(x, self.upscale_factor)


class SubPixelConv(nn.Conv2d):
    """``Conv2d(in, out * u^2, k)`` followed by a pixel shuffle by ``u`` (one sub-pixel layer), with
    the channels-last :func:`pixel_shuffle`. Same parameters as the plain convolution. (Computing a
    1x1 sub-pixel layer as a stride-u transposed convolution is exact too, but measured slower here.)
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, upscale: int):
        u = int(upscale)
        super().__init__(in_channels, out_channels * u * u, kernel_size, 1, (kernel_size - 1) // 2)
        self.upscale = u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle(super().forward(x), self.upscale)


class _Stack(nn.Module):
    channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat, lead = _flat4(x)
        if self.channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last)
        out = self.net(flat)
        return out.reshape(lead + out.shape[-3:])


class ConvStack(_Stack):
    """``Conv2d(k, stride, padding=(k-1)//2) -> activation -> GroupNorm(groups)`` per layer.

    :param groups: GroupNorm groups per layer (an int for all; 0/None: no norm).
    :param norm_act_final: whether the last conv is followed by activation and norm too.
    """

    def __init__(
        self,
        in_channels: int,
        filters: Sequence[int],
        kernel_sizes: Sequence[int],
        strides: Sequence[int] = None,
        groups=1,
        activation="celu",
        norm_act_final: bool = True,
    ):
        super().__init__()
        n = len(filters)
        strides = [1] * n if strides is None else list(strides)
        groups = [groups] * n if not isinstance(groups, (list, tuple)) else list(groups)
        if not (len(kernel_sizes) == len(strides) == len(groups) == n):
            raise ValueError("filters, kernel_sizes, strides and groups must have the same length")
        layers = []
        prev = int(in_channels)
        for i, (f, k, s) in enumerate(zip(filters, kernel_sizes, strides)):
            layers.append(nn.Conv2d(prev, int(f), int(k), int(s), (int(k) - 1) // 2))
            if i < n - 1 or norm_act_final:
                layers.append(make_activation(activation))
                layers.append(_group_norm(groups[i], int(f)))
            prev = int(f)
        self.net = nn.Sequential(*layers)
        self.out_channels = prev

    def output_size(self, size: int) -> int:
        """Spatial size of the output for a square input of side ``size``."""
        for m in self.net:
            if isinstance(m, nn.Conv2d):
                k, s, p = m.kernel_size[0], m.stride[0], m.padding[0]
                size = (size + 2 * p - k) // s + 1
        return size


class SubPixelStack(_Stack):
    """Sub-pixel convolution stack: ``Conv2d(k) to f*u^2 channels -> PixelShuffle(u) -> act -> GroupNorm``.

    A layer with upscale 1 is a plain convolution. The last layer has no activation/norm unless
    ``norm_act_final``; output activations (sigmoid) are left to the caller.
    """

    def __init__(
        self,
        in_channels: int,
        filters: Sequence[int],
        kernel_sizes: Sequence[int],
        upscales: Sequence[int],
        groups=1,
        activation="celu",
        norm_act_final: bool = False,
    ):
        super().__init__()
        n = len(filters)
        groups = [groups] * n if not isinstance(groups, (list, tuple)) else list(groups)
        if not (len(kernel_sizes) == len(upscales) == len(groups) == n):
            raise ValueError("filters, kernel_sizes, upscales and groups must have the same length")
        layers = []
        prev = int(in_channels)
        for i, (f, k, u) in enumerate(zip(filters, kernel_sizes, upscales)):
            f, k, u = int(f), int(k), int(u)
            if u == 1:
                layers.append(nn.Conv2d(prev, f, k, 1, (k - 1) // 2))
            else:
                layers.append(SubPixelConv(prev, f, k, u))
            if i < n - 1 or norm_act_final:
                layers.append(make_activation(activation))
                layers.append(_group_norm(groups[i], f))
            prev = f
        self.net = nn.Sequential(*layers)
        self.out_channels = prev
        self.channels_last = True
        self.upscale = 1
        for u in upscales:
            self.upscale *= int(u)
