"""Spatial transformer: place glimpses into an image and crop glimpses out of it.

Boxes are given as ``where = (sx, sy, cx, cy)`` in normalised image coordinates ([-1, 1], x to
the right, y down, ``align_corners=False``): the glimpse covers ``[cx - sx, cx + sx] x
[cy - sy, cy + sy]``. All functions are vectorised over any leading dimensions (batch, cells,
particles) and never loop in Python.
"""
from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn.functional as F

Size = Union[int, Tuple[int, int]]


def _hw(size: Size) -> Tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _theta(where: torch.Tensor, inverse: bool, eps: float = 1e-15) -> torch.Tensor:
    sx, sy, cx, cy = where.unbind(-1)
    zero = torch.zeros_like(sx)
    if inverse:  # image coordinate u -> glimpse coordinate (u - c) / s
        row0 = torch.stack([1.0 / (sx + eps), zero, -cx / (sx + eps)], -1)
        row1 = torch.stack([zero, 1.0 / (sy + eps), -cy / (sy + eps)], -1)
    else:  # glimpse coordinate v -> image coordinate s * v + c
        row0 = torch.stack([sx, zero, cx], -1)
        row1 = torch.stack([zero, sy, cy], -1)
    return torch.stack([row0, row1], -2)


def _interp_matrix(scale: torch.Tensor, centre: torch.Tensor, out_size: int, in_size: int, eps: float = 1e-15) -> torch.Tensor:
    """Bilinear weights ``(..., out_size, in_size)`` of the inverse STN along one axis.

    Output pixel ``j`` (centre ``u = (2j + 1) / out_size - 1``) reads the glimpse at normalised
    coordinate ``v = (u - c) / s``, i.e. at glimpse pixel ``i = ((v + 1) in_size - 1) / 2``; its
    weight on glimpse pixel ``k`` is the tent ``max(0, 1 - |i - k|)``. This is exactly what
    ``grid_sample(mode="bilinear", padding_mode="zeros", align_corners=False)`` computes for an
    axis-aligned affine grid, with the same (almost everywhere) gradients.
    """
    u = (2 * torch.arange(out_size, device=scale.device, dtype=scale.dtype) + 1) / out_size - 1
    v = (u - centre[..., None]) / (scale[..., None] + eps)
    i = ((v + 1) * in_size - 1) / 2
    k = torch.arange(in_size, device=scale.device, dtype=scale.dtype)
    return torch.relu(1 - (i[..., :, None] - k).abs())


def place(glimpses: torch.Tensor, where: torch.Tensor, image_size: Size) -> torch.Tensor:
    """Inverse STN: draw each glimpse into an otherwise empty image.

    :param glimpses: ``(..., C, h, w)``
    :param where: ``(..., 4)`` = (sx, sy, cx, cy); leading dims broadcast with the glimpses'.
    :returns: ``(..., C, H, W)``; bilinear, zero outside the box.

    Boxes are axis-aligned, so the bilinear resampling is separable: ``out = W_y @ g @ W_x^T``
    with the weight matrices of :func:`_interp_matrix` (two batched matmuls instead of an
    ``affine_grid`` + ``grid_sample``; same values, much faster on CPU).
    """
    H, W = _hw(image_size)
    h, w = glimpses.shape[-2:]
    sx, sy, cx, cy = where.unbind(-1)
    wy = _interp_matrix(sy, cy, H, h)[..., None, :, :]  # (..., 1, H, h)
    wx = _interp_matrix(sx, cx, W, w)[..., None, :, :]  # (..., 1, W, w)
    return wy @ glimpses @ wx.transpose(-1, -2)


def place_sum(glimpses: torch.Tensor, where: torch.Tensor, image_size: Size) -> torch.Tensor:
    """``place(glimpses, where, image_size).sum(-4)``: glimpses ``(..., K, C, h, w)`` summed over K.

    Computed as one matmul per image, ``[W_y,1 ... W_y,K] @ [g_1 W_x,1^T; ...; g_K W_x,K^T]``, so the
    ``(..., K, C, H, W)`` stack of placed glimpses is never materialised.
    """
    H, W = _hw(image_size)
    K, C, h, w = glimpses.shape[-4:]
    sx, sy, cx, cy = where.unbind(-1)
    wy = _interp_matrix(sy, cy, H, h)  # (..., K, H, h)
    wx = _interp_matrix(sx, cx, W, w)  # (..., K, W, w)
    a = glimpses @ wx[..., None, :, :].transpose(-1, -2)  # (..., K, C, h, W)
    lead = torch.broadcast_shapes(a.shape[:-4], wy.shape[:-3])
    a = a.expand(lead + a.shape[-4:]).movedim(-4, -3).reshape(lead + (C, K * h, W))  # (..., C, K*h, W)
    wy = wy.expand(lead + wy.shape[-3:]).movedim(-3, -2).reshape(lead + (1, H, K * h))  # (..., 1, H, K*h)
    return wy @ a


def place_grid_sample(glimpses: torch.Tensor, where: torch.Tensor, image_size: Size) -> torch.Tensor:
    """Reference implementation of :func:`place` with ``affine_grid`` + ``grid_sample``."""
    H, W = _hw(image_size)
    lead = torch.broadcast_shapes(glimpses.shape[:-3], where.shape[:-1])
    g = glimpses.expand(lead + glimpses.shape[-3:]).reshape((-1,) + glimpses.shape[-3:])
    theta = _theta(where.expand(lead + (4,)).reshape(-1, 4), inverse=True)
    grid = F.affine_grid(theta, [g.shape[0], g.shape[1], H, W], align_corners=False)
    out = F.grid_sample(g, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(lead + out.shape[-3:])


def crop(images: torch.Tensor, where: torch.Tensor, glimpse_size: Size) -> torch.Tensor:
    """STN: read a glimpse out of an image for each box.

    :param images: ``(..., C, H, W)``
    :param where: ``(..., K, 4)``: K boxes per image (leading dims match the images').
    :returns: ``(..., K, C, h, w)``. The K grids are stacked along the height of one sampling
        grid, so the image is never copied K times.
    """
    h, w = _hw(glimpse_size)
    lead = images.shape[:-3]
    K = where.shape[-2]
    where = where.expand(lead + (K, 4))
    img = images.reshape((-1,) + images.shape[-3:])
    n = img.shape[0]
    theta = _theta(where.reshape(-1, 4), inverse=False)
    grid = F.affine_grid(theta, [n * K, 1, h, w], align_corners=False)  # (n*K, h, w, 2)
    grid = grid.reshape(n, K * h, w, 2)
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (n, C, K*h, w)
    out = out.reshape(n, img.shape[1], K, h, w).transpose(1, 2)
    return out.reshape(lead + (K, img.shape[1], h, w))


def where_to_boxes(where: torch.Tensor, image_size: Size) -> torch.Tensor:
    """``(sx, sy, cx, cy)`` in normalised coordinates -> pixel boxes ``(x0, y0, x1, y1)``."""
    H, W = _hw(image_size)
    sx, sy, cx, cy = where.unbind(-1)
    return torch.stack([(cx - sx + 1) * W / 2, (cy - sy + 1) * H / 2, (cx + sx + 1) * W / 2, (cy + sy + 1) * H / 2], -1)


def boxes_to_where(boxes: torch.Tensor, image_size: Size) -> torch.Tensor:
    """Pixel boxes ``(x0, y0, x1, y1)`` -> ``(sx, sy, cx, cy)`` (inverse of :func:`where_to_boxes`)."""
    H, W = _hw(image_size)
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x1 - x0) / W, (y1 - y0) / H, (x0 + x1) / W - 1, (y0 + y1) / H - 1], -1)
