"""Rendering the symbolic map z^s (Jiang & Ahn 2020, supplement Algorithm 2; docs/gnm.md, "Rendering").

* digit scenes (no alpha channel, no background): additive ``x = sum_k z_pres_k STN^-1(o_k)``;
* RGB scenes with alpha: importance ``gamma_k = STN^-1(alpha_k z_pres_k sigmoid(-depth_k))``
  normalised over cells; ``fg = sum_k gamma_k STN^-1(alpha_k z_pres_k o_k)``; alpha map =
  ``sum_k STN^-1(alpha_k z_pres_k)`` clamped to [eps, 1 - eps] with a straight-through gradient;
  ``x = fg + (1 - alpha) * bg`` (the authors' code). SPACE's alpha map (``mean_alpha``) is the
  importance-weighted mean ``sum_k gamma_k STN^-1(alpha_k z_pres_k)`` instead.

The compositing can be changed by handlers through one Pyro effect, :func:`render_options`
(message type ``"gnm_render"``): the fixed-mask curriculum of the supplement (section 3) sets
``alpha`` (a constant alpha map) and ``pres_max`` (an upper clamp on z_pres in rendering).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from pyro.poutine.runtime import effectful

from pyro_scenes.nn.convlstm import broadcast_cat
from pyro_scenes.nn.stn import place, place_sum

#: Pyro message type of :func:`render_options`; a Messenger implements ``_pyro_gnm_render``.
RENDER_EFFECT = "gnm_render"


@dataclass(frozen=True)
class RenderOptions:
    """Overrides of the compositing (``None``: not overridden)."""

    alpha: Optional[float] = None  # a constant alpha map instead of the rendered one
    pres_max: Optional[float] = None  # clamp z_pres from above inside the renderer


def _options(options: RenderOptions) -> RenderOptions:
    return options


#: ``render_options(RenderOptions(), name="render")``: returns the options after every active
#: handler has had its say (handlers rewrite ``msg["args"]``); outside handlers, the argument.
render_options = effectful(_options, type=RENDER_EFFECT)


def where_from_raw(raw: torch.Tensor, grid: int) -> torch.Tensor:
    """Raw z_where ``(..., G*G, 4)`` = (scale logit, log ratio, shift x, shift y) -> (sx, sy, cx, cy).

    ``s = sigmoid(scale logit)``, ``r = exp(log ratio)``, ``sx = s / sqrt(r)``, ``sy = s sqrt(r)``,
    ``c = (2/G) (cell index + 0.5 + tanh(shift)) - 1`` (an object may move one cell away).
    """
    n = grid * grid
    idx = torch.arange(n, device=raw.device)
    offset = torch.stack([idx % grid, idx // grid], -1).to(raw.dtype)  # (G*G, 2): column, row
    s = torch.sigmoid(raw[..., 0])
    sqrt_r = torch.exp(0.5 * raw[..., 1])
    centre = (2.0 / grid) * (offset + 0.5 + torch.tanh(raw[..., 2:4])) - 1.0
    return torch.stack([s / sqrt_r, s * sqrt_r, centre[..., 0], centre[..., 1]], -1)


def render_additive(appearance: torch.Tensor, z_pres: torch.Tensor, where: torch.Tensor, image_size: int) -> torch.Tensor:
    """``x = sum_k z_pres_k STN^-1(o_k)``; ``appearance (..., K, C, g, g)``, ``z_pres (..., K)``.

    z_pres scales the glimpse before placement (bilinear placement is linear in the glimpse), and
    the sum over cells is fused into the placement (:func:`~pyro_scenes.nn.stn.place_sum`).
    """
    return place_sum(appearance * z_pres[..., None, None, None], where, image_size)


def render_alpha(
    appearance: torch.Tensor,
    alpha: torch.Tensor,
    z_pres: torch.Tensor,
    z_depth: torch.Tensor,
    where: torch.Tensor,
    background: torch.Tensor,
    image_size: int,
    eps: float = 1e-15,
    options: RenderOptions = RenderOptions(),
    mean_alpha: bool = False,
):
    """Algorithm 2 with alpha and depth; returns ``(x, foreground, alpha_map)``.

    :param appearance: ``(..., K, C, g, g)``; :param alpha: ``(..., K, 1, g, g)``;
    :param z_pres: ``(..., K)``; :param z_depth: ``(..., K, 1)``; :param where: ``(..., K, 4)``;
    :param background: ``(..., C, H, W)``.
    :param mean_alpha: SPACE's alpha map: the importance-weighted mean ``sum_k gamma_k
        STN^-1(alpha_k z_pres_k)``, in [0, 1] by construction (GNM's: the clamped sum).
    """
    C = appearance.shape[-3]
    if options.pres_max is not None:
        z_pres = z_pres.clamp(max=options.pres_max)
    a_hat = alpha * z_pres[..., None, None, None]
    importance = a_hat * torch.sigmoid(-z_depth)[..., None, None]
    stacked = broadcast_cat([a_hat * appearance, importance, a_hat], -3)
    placed = place(stacked, where, image_size)  # (..., K, C + 2, H, W): one grid_sample for all three
    y_cells, imp, a_full = placed.split([C, 1, 1], -3)
    imp = imp / (imp.sum(-4, keepdim=True) + eps)
    foreground = (y_cells * imp).sum(-4)
    if mean_alpha:
        alpha_map = (a_full * imp).sum(-4)
    else:
        alpha_map = a_full.sum(-4)
        alpha_map = alpha_map + (alpha_map.clamp(eps, 1 - eps) - alpha_map).detach()
    if options.alpha is not None:
        alpha_map = torch.full_like(alpha_map, float(options.alpha))
    x = foreground + (1 - alpha_map) * background
    return x, foreground, alpha_map
