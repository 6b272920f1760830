"""A generic multi-layer perceptron: ``Linear -> activation -> norm`` blocks.

Shared by the models in :mod:`pyro_scenes` (GNM's StructDRAW interaction and decoder MLPs and its
background networks use it). Inputs may have any number of leading dimensions.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

_ACTIVATIONS = {
    "celu": nn.CELU,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def make_activation(activation: Union[str, Callable[[], nn.Module], None]) -> nn.Module:
    """``"celu"``/``"relu"``/... or a module factory -> a fresh activation module (``None`` -> identity)."""
    if activation is None:
        return nn.Identity()
    if isinstance(activation, str):
        try:
            return _ACTIVATIONS[activation.lower()]()
        except KeyError:
            raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(sorted(_ACTIVATIONS))}") from None
    return activation()


def make_norm(norm: Optional[str], features: int) -> nn.Module:
    """``"layer"`` (LayerNorm), ``None`` (identity)."""
    if norm is None or norm == "none":
        return nn.Identity()
    if norm == "layer":
        return nn.LayerNorm(features)
    raise ValueError(f"unknown norm {norm!r} for an MLP; use 'layer' or None")


class MLP(nn.Sequential):
    """``in_features -> widths[0] -> ... -> widths[-1]``.

    Every layer but the last is followed by ``activation`` then ``norm``; the last one too when
    ``norm_act_final`` (GNM's z^g decoder ends that way). This is the layer order of the GNM
    authors (``Linear -> CELU -> LayerNorm``).

    >>> MLP(32, [512, 512, 64])(torch.zeros(7, 3, 32)).shape
    torch.Size([7, 3, 64])
    """

    def __init__(
        self,
        in_features: int,
        widths: Sequence[int],
        activation: Union[str, Callable[[], nn.Module], None] = "celu",
        norm: Optional[str] = "layer",
        norm_act_final: bool = False,
    ):
        if len(widths) == 0:
            raise ValueError("an MLP needs at least one layer")
        layers = []
        prev = int(in_features)
        for i, width in enumerate(widths):
            layers.append(nn.Linear(prev, int(width)))
            if i < len(widths) - 1 or norm_act_final:
                layers.append(make_activation(activation))
                layers.append(make_norm(norm, int(width)))
            prev = int(width)
        super().__init__(*layers)
        self.in_features = int(in_features)
        self.out_features = prev
