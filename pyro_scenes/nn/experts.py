"""Layers that hold K independent parameter sets ("experts") and run them in one batched pass.

ECON (section 4) uses K separate experts. Looping over experts in Python would cost K kernel
launches per layer; instead every layer here stores stacked parameters of shape ``(K, ...)``
and evaluates

* all experts on a batch at once (``(N, K, C, H, W)`` activations, one grouped convolution with
  ``groups=K``), used by the competition, which scores every expert;
* one chosen expert per item (``experts`` of shape ``(N,)``), by gathering that expert's
  weights and running a grouped convolution with ``groups=N``; used by the model once the
  winner (or a user's ``do`` intervention) fixed ``k_t``.

Activations in the all-experts path are laid out ``(N, K, C, H, W)`` so that
``view(N, K * C, H, W)`` is free and grouped convolutions need no transposes.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def _init_stacked(weight: torch.Tensor, bias: Optional[torch.Tensor], fan_in: int) -> None:
    """PyTorch's default (Kaiming-uniform) initialisation, independently for each expert."""
    bound_w = 1.0 / math.sqrt(fan_in) * math.sqrt(3.0) * math.sqrt(2.0 / (1 + 5))
    nn.init.uniform_(weight, -bound_w, bound_w)
    if bias is not None:
        bound_b = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(bias, -bound_b, bound_b)


class ExpertConv2d(nn.Module):
    """K independent ``Conv2d(in_channels, out_channels, kernel_size, padding)`` layers.

    ``forward(x)`` with ``x`` of shape ``(N, K, C, H, W)`` applies expert k to ``x[:, k]``;
    with ``x`` of shape ``(N, C, H, W)`` (an input shared by all experts) every expert sees the
    same input; ``forward(x, experts=k)`` with ``x`` ``(N, C, H, W)`` and ``k`` ``(N,)`` applies
    expert ``k[n]`` to ``x[n]`` and returns ``(N, C_out, H', W')``.
    """

    def __init__(self, num_experts: int, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0):
        super().__init__()
        self.num_experts, self.in_channels, self.out_channels = num_experts, in_channels, out_channels
        self.kernel_size, self.padding = kernel_size, padding
        self.weight = nn.Parameter(torch.empty(num_experts, out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(num_experts, out_channels))
        _init_stacked(self.weight, self.bias, in_channels * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor, experts: Optional[torch.Tensor] = None) -> torch.Tensor:
        K, Co, Ci, k = self.num_experts, self.out_channels, self.in_channels, self.kernel_size
        if experts is not None:  # one expert per item: groups = N
            n = x.shape[0]
            w = self.weight[experts].reshape(n * Co, Ci, k, k)
            b = self.bias[experts].reshape(n * Co)
            y = F.conv2d(x.reshape(1, n * Ci, *x.shape[-2:]), w, b, padding=self.padding, groups=n)
            return y.view(n, Co, *y.shape[-2:])
        n = x.shape[0]
        w = self.weight.reshape(K * Co, Ci, k, k)
        b = self.bias.reshape(K * Co)
        if x.dim() == 4:  # shared input: an ordinary convolution with K * C_out filters
            y = F.conv2d(x, w, b, padding=self.padding)
        else:
            y = F.conv2d(x.reshape(n, K * Ci, *x.shape[-2:]), w, b, padding=self.padding, groups=K)
        return y.view(n, K, Co, *y.shape[-2:])


class ExpertLinear(nn.Module):
    """K independent ``Linear(in_features, out_features)`` layers.

    ``x`` ``(N, K, F)`` -> ``(N, K, F_out)``; ``x`` ``(N, F)`` with ``experts`` ``(N,)`` ->
    ``(N, F_out)`` using expert ``experts[n]`` for row n.
    """

    def __init__(self, num_experts: int, in_features: int, out_features: int):
        super().__init__()
        self.num_experts, self.in_features, self.out_features = num_experts, in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_experts, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_experts, out_features))
        _init_stacked(self.weight, self.bias, in_features)

    def forward(self, x: torch.Tensor, experts: Optional[torch.Tensor] = None) -> torch.Tensor:
        if experts is not None:
            return torch.einsum("nf,nof->no", x, self.weight[experts]) + self.bias[experts]
        return torch.einsum("nkf,kof->nko", x, self.weight) + self.bias


def merge_experts(x: torch.Tensor) -> torch.Tensor:
    """``(N, K, C, H, W)`` -> ``(N, K * C, H, W)`` (a view), for per-channel ops such as pooling."""
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def split_experts(x: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Inverse of :func:`merge_experts`."""
    return x.reshape(x.shape[0], num_experts, x.shape[1] // num_experts, *x.shape[2:])

