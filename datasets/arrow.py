"""A 2D procedural STAND-IN for GNM's 3D "Arrow room" dataset.

GNM's Arrow room is rendered in 3D (which cannot be done here); this module keeps its logic --
three objects from three shape classes, exactly two sharing a shape, and an arrow pointing at
the odd one -- in a 2D scene with a shaded, textured floor/wall background, shaded objects,
floor shadows and occlusion by depth.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._rng import ItemRNG
from .base import (Batch, SceneDataset, boxes_from_masks, check_int, layer, pixel_grid,
                   upsample_bilinear)
from .errors import DatasetError

CUBE, SPHERE, CYLINDER = 0, 1, 2
CLASS_NAMES = ("cube", "sphere", "cylinder")
_LIGHT = np.array([-0.45, -0.55, 0.70]) / np.linalg.norm([-0.45, -0.55, 0.70])

# geometry, as fractions of the image size
_OBJ_BOTTOM_MAX = 0.72   # lowest object bottom edge; the arrow lives below it
_ARROW_LEN = 0.20
_ARROW_SHAFT = 0.022     # half-width
_ARROW_HEAD_LEN = 0.075
_ARROW_HEAD = 0.055      # half-width


def _box_cov(xs, ys, cx, cy, hx, hy):
    """Exact area coverage of axis-aligned boxes (centre cx, cy; half sizes hx, hy)."""
    ox = (torch.minimum(xs + 0.5, cx + hx) - torch.maximum(xs - 0.5, cx - hx)).clamp(0, 1)
    oy = (torch.minimum(ys + 0.5, cy + hy) - torch.maximum(ys - 0.5, cy - hy)).clamp(0, 1)
    return ox * oy


def object_layers(cls: int, cx, cy, s, size: int):
    """Coverage (M, H, W) and shading factor (M, H, W) of M objects of one shape class."""
    xs, ys = pixel_grid(size)
    xs, ys = xs[0], ys[0]
    cx, cy, s = cx.view(-1, 1, 1), cy.view(-1, 1, 1), s.view(-1, 1, 1)
    dx, dy = xs - cx, ys - cy
    lx, ly, lz = (float(v) for v in _LIGHT)
    if cls == CUBE:
        cov = _box_cov(xs, ys, cx, cy, s, s)
        top = (dy < -0.55 * s).float()                       # lit "top face"
        side = 0.95 - 0.3 * (dx + s) / (2 * s)                # light from the left
        shade = top * 1.25 + (1 - top) * side
        edge = ((s - dx.abs()).clamp(0, 1.5) / 1.5) * ((s - dy.abs()).clamp(0, 1.5) / 1.5)
        return cov, shade * (0.75 + 0.25 * edge)
    if cls == SPHERE:
        r2 = (dx * dx + dy * dy) / (s * s)
        cov = (s - (dx * dx + dy * dy).sqrt() + 0.5).clamp(0, 1)
        nz = (1 - r2).clamp(min=0).sqrt()
        lam = (dx / s * lx + dy / s * ly + nz * lz).clamp(min=0)
        spec = lam * lam
        spec = spec * spec
        spec = spec * spec
        spec = spec * spec                                    # lam ** 16
        return cov, 0.3 + 0.8 * lam + 0.5 * spec
    if cls == CYLINDER:
        a, e = 0.8 * s, 0.28 * s
        body = _box_cov(xs, ys, cx, cy, a, s - e)
        dxa = dx / a
        r_top = (dxa * dxa + ((dy + s - e) / e) ** 2).sqrt()
        r_bot = (dxa * dxa + ((dy - s + e) / e) ** 2).sqrt()
        cap_top = (0.5 - (r_top - 1) * e).clamp(0, 1)
        cap_bot = (0.5 - (r_bot - 1) * e).clamp(0, 1)
        cov = torch.maximum(torch.maximum(body, cap_top), cap_bot)
        nx = dxa.clamp(-1, 1)
        nz = (1 - nx * nx).clamp(min=0).sqrt()
        lam = (nx * lx + nz * lz).clamp(min=0)
        side = 0.35 + 0.8 * lam
        in_cap = (r_top <= 1).float()
        return cov, in_cap * 1.2 + (1 - in_cap) * side
    raise DatasetError(f"unknown arrow-scene shape class {cls}")


class ArrowScenes(SceneDataset):
    """2D procedural stand-in for GNM's Arrow room (the real one is 3D renders).

    Each RGB scene has a shaded, noise-textured wall and floor (random colours, random horizon
    height), three objects standing on the floor -- shape classes cube-like square (0),
    sphere-like shaded disc (1) and cylinder (2), exactly two of the three sharing a shape, each
    with its own random colour, with a soft floor shadow -- and a flat arrow painted on the
    floor in front of them, pointing from its centre exactly at the centre of the odd object.
    Objects farther back (higher on the floor) are smaller and drawn first, so nearer objects
    occlude them; objects stand in three randomly permuted columns, so they are spread out and
    the arrow's target is unambiguous.  The arrow lies below every object and never overlaps
    one.

    Item keys (N = 3, H = W = ``image_size``):
        ``image`` float (3, H, W); ``num_objects`` long () = 3; ``valid`` bool (3,);
        ``boxes`` float (3, 4) tight (x0, y0, x1, y1) boxes of the full masks, x1/y1 exclusive;
        ``labels`` long (3,) shape class 0 cube, 1 sphere, 2 cylinder; ``masks`` /
        ``visible_masks`` bool (3, H, W); ``segmentation`` long (H, W) 0 background (the
        arrow counts as background here), i + 1 object i; objects listed back to front;
        ``odd_index`` long () index of the odd object; ``arrow_box`` float (4,);
        ``arrow_mask`` bool (H, W); ``arrow_tail`` / ``arrow_tip`` float (2,) (x, y) ends of
        the arrow's axis; ``centers`` float (3, 2) object centres; ``colors`` float (3, 3)
        object base colours.
    """

    num_channels = 3
    max_objects = 3
    name = "arrow"

    def __init__(self, num_scenes: int, image_size: int = 128, seed: int = 0) -> None:
        super().__init__(num_scenes, seed)
        self.image_size = check_int("image_size", image_size, 1)
        if self.image_size < 32:
            raise DatasetError(f"image too small: arrow scenes need image_size >= 32 for the "
                               f"objects and the arrow to fit, got {self.image_size}")
        self.chunk_size = max(8, int(2 ** 21 // self.image_size ** 2))

    def config(self) -> dict:
        return dict(image_size=self.image_size, seed=self.seed)

    def _generate(self, idx: np.ndarray) -> Batch:
        b, S = idx.size, self.image_size
        g = _layout(_draw(ItemRNG(self.seed, idx), S), S)
        arrow_cov = _arrow_coverage(g, S)
        img = _shadows(_background(g, S), g, S)
        img = img + arrow_cov[:, None] * (g["arrow_col"][:, :, None, None] - img)  # painted on the floor
        cov, img = _paint_objects(img, g, S)
        masks = cov >= 0.5
        visible, seg = layer(masks)
        arrow_mask = arrow_cov >= 0.5
        return {
            "image": img.clamp_(0, 1),
            "num_objects": torch.full((b,), 3, dtype=torch.long),
            "valid": torch.ones(b, 3, dtype=torch.bool),
            "boxes": boxes_from_masks(masks),
            "labels": torch.from_numpy(g["labels"]).long(),
            "masks": masks,
            "visible_masks": visible,
            "segmentation": seg,
            "odd_index": torch.from_numpy(g["odd_index"]).long(),
            "arrow_box": boxes_from_masks(arrow_mask),
            "arrow_mask": arrow_mask,
            "arrow_tail": _float(g["tail"]),
            "arrow_tip": _float(g["tip"]),
            "centers": _float(np.stack([g["cx"], g["cy"]], -1)),
            "colors": g["colors"],
        }


def _float(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).float()


def _draw(rng: ItemRNG, S: int) -> dict:
    """Every random number of a batch of scenes, drawn in a fixed order (a fixed count per scene)."""
    p = dict(horizon=rng.uniform_np(low=0.35 * S, high=0.5 * S),                  # (B,)
             wall=rng.uniform(3, low=0.35, high=0.75),
             floor=rng.uniform(3, low=0.25, high=0.6),
             coarse=rng.uniform(8, 8, low=-1.0, high=1.0),
             fine=rng.uniform(32, 32, low=-1.0, high=1.0),
             odd_cls=rng.randint(0, 3).numpy())
    p["shared_cls"] = (p["odd_cls"] + 1 + rng.randint(0, 2).numpy()) % 3
    p.update(odd_slot=rng.randint(0, 3).numpy(),
             cols=rng.permutation(3).numpy(),
             jitter=rng.uniform_np(3, low=-0.13, high=0.13) * S,
             t=rng.uniform_np(3),
             size_jit=rng.uniform_np(3, low=0.9, high=1.1),
             colors=rng.uniform(3, 3, low=0.15, high=0.95),
             arrow_c=np.stack([rng.uniform_np(low=0.35 * S, high=0.65 * S),
                               rng.uniform_np(low=0.84 * S, high=0.88 * S)], -1),  # (B, 2)
             arrow_col=rng.uniform(3, low=0.75, high=1.0))
    return p


def _layout(p: dict, S: int) -> dict:
    """``p`` with the objects' classes, sizes and centres in depth order (farther, i.e. smaller
    base y, first), the odd object's index and the arrow's direction and ends."""
    ar = np.arange(len(p["horizon"]))
    labels = np.where(np.arange(3)[None] == p["odd_slot"][:, None], p["odd_cls"][:, None], p["shared_cls"][:, None])
    horizon, t = p["horizon"][:, None], p["t"]
    base = horizon + 0.08 * S + t * (_OBJ_BOTTOM_MAX * S - horizon - 0.08 * S)
    s = S * (0.08 + 0.06 * t) * p["size_jit"]
    cx = np.clip((p["cols"] + 0.5) * S / 3 + p["jitter"], s, S - s)
    order = np.argsort(base, axis=1, kind="stable")
    take = lambda a: np.take_along_axis(a, order, 1)  # noqa: E731
    g = dict(p, labels=take(labels), base=take(base), s=take(s), cx=take(cx), cy=take(base - s),
             colors=p["colors"][torch.from_numpy(ar)[:, None], torch.from_numpy(order)],
             odd_index=np.argmax(order == p["odd_slot"][:, None], axis=1))
    # the arrow points from its centre to the odd object's centre
    target = np.stack([g["cx"][ar, g["odd_index"]], g["cy"][ar, g["odd_index"]]], -1)
    d = target - p["arrow_c"]
    g["d"] = d / np.sqrt((d ** 2).sum(-1, keepdims=True))
    g["half"] = _ARROW_LEN * S / 2
    g["tip"], g["tail"] = p["arrow_c"] + g["d"] * g["half"], p["arrow_c"] - g["d"] * g["half"]
    return g


def _grid(S: int):
    xs, ys = pixel_grid(S)
    return xs[0], ys[0]                                                          # (1,1,W),(1,H,1)


def _background(g: dict, S: int) -> torch.Tensor:
    """Wall above the horizon, floor below, shading gradients and value noise: (B, 3, H, W)."""
    xs, ys = _grid(S)
    hz = _float(g["horizon"]).view(-1, 1, 1)
    on_floor = (ys - hz + 0.5).clamp(0, 1)                                       # (B, H, 1)
    wall_shade = 0.85 + 0.25 * (1 - ys / hz).clamp(0, 1)
    floor_shade = 0.7 + 0.45 * ((ys - hz) / (S - hz)).clamp(0, 1)
    noise = 1 + 0.07 * upsample_bilinear(g["coarse"], S) + 0.04 * upsample_bilinear(g["fine"], S)
    img = (g["wall"][:, :, None, None] * (wall_shade * (1 - on_floor))[:, None]
           + g["floor"][:, :, None, None] * (floor_shade * on_floor)[:, None])
    return img * noise[:, None]


def _shadows(img: torch.Tensor, g: dict, S: int) -> torch.Tensor:
    """``img`` darkened by each object's soft shadow on the floor."""
    xs, ys = _grid(S)
    b = img.shape[0]
    cx, base, s = g["cx"], g["base"], g["s"]
    for i in range(3):
        sx = _float(cx[:, i] + 0.25 * s[:, i]).view(b, 1, 1)
        sy = _float(base[:, i]).view(b, 1, 1)
        rx, ry = _float(1.2 * s[:, i]).view(b, 1, 1), _float(0.3 * s[:, i]).view(b, 1, 1)
        r = (((xs - sx) / rx) ** 2 + ((ys - sy) / ry) ** 2).sqrt()
        img = img * (1 - 0.35 * ((1 - r) * 2).clamp(0, 1))[:, None]
    return img


def _arrow_coverage(g: dict, S: int) -> torch.Tensor:
    """The arrow's pixel coverage (B, H, W): a shaft and a triangular head."""
    xs, ys = _grid(S)
    b, half = len(g["d"]), g["half"]
    ax, ay = _float(g["arrow_c"][:, 0]).view(b, 1, 1), _float(g["arrow_c"][:, 1]).view(b, 1, 1)
    ux, uy = _float(g["d"][:, 0]).view(b, 1, 1), _float(g["d"][:, 1]).view(b, 1, 1)
    u = (xs - ax) * ux + (ys - ay) * uy
    v = ((ys - ay) * ux - (xs - ax) * uy).abs()
    hl, hh, sw = _ARROW_HEAD_LEN * S, _ARROW_HEAD * S, _ARROW_SHAFT * S
    sd_shaft = torch.maximum(torch.maximum(-half - u, u - (half - hl)), v - sw)
    norm = math.sqrt(hl * hl + hh * hh)
    sd_head = torch.maximum((half - hl) - u, (v * hl - hh * (half - u)) / norm)
    return (0.5 - torch.minimum(sd_shaft, sd_head)).clamp(0, 1)


def _paint_objects(img: torch.Tensor, g: dict, S: int):
    """The objects' coverage (B, 3, H, W) and ``img`` with them painted back to front."""
    b = img.shape[0]
    cov = torch.empty(b * 3, S, S)
    shade = torch.empty(b * 3, S, S)
    fl = torch.from_numpy(g["labels"].reshape(-1))
    fcx, fcy, fs = _float(g["cx"].reshape(-1)), _float(g["cy"].reshape(-1)), _float(g["s"].reshape(-1))
    for cls in (CUBE, SPHERE, CYLINDER):
        sel = (fl == cls).nonzero().squeeze(1)
        if sel.numel():
            cov[sel], shade[sel] = object_layers(cls, fcx[sel], fcy[sel], fs[sel], S)
    cov, shade = cov.view(b, 3, S, S), shade.view(b, 3, S, S)
    for i in range(3):
        obj = (g["colors"][:, i, :, None, None] * shade[:, i, None]).clamp(0, 1)
        img = img + cov[:, i, None] * (obj - img)
    return cov, img
