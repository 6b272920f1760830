"""Convolutional LSTM cell (Shi et al. 2015) with learned initial state, any leading dims."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class ConvLSTMCell(nn.Module):
    """One ConvLSTM step: gates from ``Conv2d(cat[input, h])`` in the order i, f, o, g.

    :param size: spatial size (height = width) of the state; the initial ``h`` and ``c`` are
        learned parameters of shape ``(hidden, size, size)`` as in the GNM authors' code.

    ``forward(x, (h, c))`` accepts ``x`` and the state with any (broadcastable) leading dims.
    """

    def __init__(self, input_dim: int, hidden_dim: int, kernel_size: int = 1, size: int = 4):
        super().__init__()
        self.input_dim = int(input_dim)
        self.hidden_dim = int(hidden_dim)
        self.conv = nn.Conv2d(self.input_dim + self.hidden_dim, 4 * self.hidden_dim, int(kernel_size), padding=(int(kernel_size) - 1) // 2)
        self.h_0 = nn.Parameter(torch.zeros(self.hidden_dim, size, size))
        self.c_0 = nn.Parameter(torch.zeros(self.hidden_dim, size, size))

    def init_state(self, batch_shape) -> Tuple[torch.Tensor, torch.Tensor]:
        shape = tuple(batch_shape) + tuple(self.h_0.shape)
        return self.h_0.expand(shape), self.c_0.expand(shape)

    def forward(self, x: torch.Tensor, state: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        inp = broadcast_cat([x, h], dim=-3)
        lead = inp.shape[:-3]
        gates = self.conv(inp.reshape((-1,) + inp.shape[-3:]))
        gates = gates.reshape(lead + gates.shape[-3:])
        i, f, o, g = gates.split(self.hidden_dim, dim=-3)
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_next = torch.sigmoid(o) * torch.tanh(c_next)
        return h_next, c_next


def broadcast_cat(tensors, dim: int = -3) -> torch.Tensor:
    """``torch.cat`` along a negative ``dim`` after broadcasting every other dimension."""
    assert dim < 0
    ndim = max(t.dim() for t in tensors)
    shapes = [(1,) * (ndim - t.dim()) + tuple(t.shape) for t in tensors]
    target = list(shapes[0])
    for s in shapes[1:]:
        for i, n in enumerate(s):
            if i == ndim + dim:
                continue
            if target[i] == 1:
                target[i] = n
            elif n != 1 and n != target[i]:
                raise ValueError(f"cannot broadcast shapes {shapes} for cat along dim {dim}")
    out = []
    for t, s in zip(tensors, shapes):
        tgt = list(target)
        tgt[ndim + dim] = s[ndim + dim]
        out.append(t.reshape(s).expand(tgt))
    return torch.cat(out, dim=dim)
