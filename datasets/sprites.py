"""ECON sprites: circles, squares and triangles on a uniformly coloured background.

Follows ECON appendix C.1 (see docs/datasets.md).  Rendering is vectorised: every shape is an
implicit function evaluated on the pixel grid for all objects of a batch at once.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._rng import ItemRNG
from .base import Batch, SceneDataset, boxes_from_masks, check_int, layer, pixel_grid
from .errors import DatasetError

CIRCLE, SQUARE, TRIANGLE = 0, 1, 2
CLASS_NAMES = ("circle", "square", "triangle")
#: ECON's unique colours, indexed by class id
UNIQUE_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255))
VARIANTS = ("unique", "random")
_NUM_CANDIDATES = 8
_INV_SQRT5x2 = 2.0 / math.sqrt(5.0)


def shape_coverage(cls: int, cx: torch.Tensor, cy: torch.Tensor, s: torch.Tensor, size: int,
                   antialias: bool) -> torch.Tensor:
    """Coverage in [0, 1] of ``M`` shapes of one class on a ``size`` x ``size`` grid.

    ``cx, cy, s``: float tensors (M,) with centre and half-size (circle radius, square half
    side, triangle half base = half height) in pixels.  Returns (M, size, size).

    Anti-aliasing is analytic area coverage, i.e. the limit of box-filter supersampling: exact
    for the axis-aligned square (product of the 1-D overlaps of pixel and square), and the
    signed-distance approximation ``clamp(0.5 - d, 0, 1)`` for the circle and the triangle.
    Without anti-aliasing a pixel is covered when its centre is inside the shape.
    """
    xs, ys = pixel_grid(size)
    xs, ys = xs[0], ys[0]  # (1, 1, W), (1, H, 1)
    cx, cy, s = cx.view(-1, 1, 1), cy.view(-1, 1, 1), s.view(-1, 1, 1)
    if cls == SQUARE:
        if antialias:
            ox = (torch.minimum(xs + 0.5, cx + s) - torch.maximum(xs - 0.5, cx - s)).clamp_(0, 1)
            oy = (torch.minimum(ys + 0.5, cy + s) - torch.maximum(ys - 0.5, cy - s)).clamp_(0, 1)
            return ox * oy
        return (((xs - cx).abs() <= s) & ((ys - cy).abs() <= s)).float()
    if cls == CIRCLE:
        d = ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt()
        if antialias:
            return (s - d + 0.5).clamp_(0, 1)
        return (d <= s).float()
    if cls == TRIANGLE:
        # upright isosceles triangle: apex (cx, cy - s), base (cx -+ s, cy + s)
        base = ys - (cy + s)
        side = ((xs - cx).abs() - (ys - cy + s) * 0.5) * _INV_SQRT5x2
        sd = torch.maximum(base, side)
        if antialias:
            return (0.5 - sd).clamp_(0, 1)
        return (sd <= 0).float()
    raise DatasetError(f"unknown sprite class {cls}")


class Sprites(SceneDataset):
    """ECON sprites (appendix C.1): circles, squares and triangles.

    Args:
        num_scenes: number of scenes (items are rendered lazily).
        variant: ``"unique"`` -- red circle (255,0,0), green square (0,255,0), blue triangle
            (0,0,255); ``"random"`` -- every object colour channel a uniform integer in 128..255.
            The background colour channels are uniform integers in 0..127 in both variants.
        image_size: height = width in pixels (default 64).
        num_objects: objects per scene (default 3: exactly one per class). More than 3 needs
            ``allow_repeats=True``.
        allow_repeats: draw each object's class uniformly (repeats allowed) instead of a random
            arrangement of distinct classes.
        antialias: soft edges (analytic area coverage); ground-truth masks are the coverage
            thresholded at 0.5.
        seed: scene ``i`` is a pure function of ``(seed, i)`` and the settings.
        size_range: object half-size (circle radius, square/triangle half side) as a fraction
            of ``image_size``, drawn uniformly (default 0.15..0.25).

    Objects are listed back to front (index order is depth order, object 0 deepest, the depth
    order of the classes is random).  Every object lies fully inside the image.  Positions are
    uniform; among 8 fixed candidate positions per object the first whose centre is at least
    half the summed sizes away from the objects placed before is used (else the farthest), so
    objects overlap and occlude but are rarely hidden entirely.

    Item keys (N = ``max_objects`` = ``num_objects``, H = W = ``image_size``):
        ``image`` float (3, H, W) in [0, 1]; ``num_objects`` long (); ``valid`` bool (N,);
        ``boxes`` float (N, 4) (x0, y0, x1, y1) tight pixel box of the full mask, x1/y1
        exclusive; ``labels`` long (N,) 0 circle, 1 square, 2 triangle; ``masks`` bool (N, H, W)
        full (unoccluded) shapes; ``visible_masks`` bool (N, H, W) = own mask minus the masks of
        all objects after it; ``segmentation`` long (H, W) 0 background, i + 1 object i;
        ``depth_order`` long (N,) = arange(N) (0 = back); ``background_color`` float (3,);
        ``colors`` float (N, 3) (both in [0, 1], i.e. the integer colour / 255);
        ``centers`` float (N, 2) (x, y) shape centres in pixels; ``sizes`` float (N,) half-sizes
        in pixels.
    """

    num_channels = 3

    def __init__(self, num_scenes: int, variant: str = "unique", image_size: int = 64,
                 num_objects: int = 3, allow_repeats: bool = False, antialias: bool = True,
                 seed: int = 0, size_range: tuple = (0.15, 0.25)) -> None:
        super().__init__(num_scenes, seed)
        if variant not in VARIANTS:
            raise DatasetError(f"unknown sprites variant {variant!r}; valid variants: "
                               f"{', '.join(VARIANTS)}")
        self.variant = variant
        self.image_size = check_int("image_size", image_size, 1)
        if not (isinstance(num_objects, int) and not isinstance(num_objects, bool)):
            raise DatasetError(f"num_objects must be an integer, got {num_objects!r}")
        if num_objects < 1:
            raise DatasetError(f"num_objects must be >= 1 (a scene needs at least one object), "
                               f"got {num_objects}")
        if num_objects > 3 and not allow_repeats:
            raise DatasetError(f"num_objects={num_objects} > 3 needs allow_repeats=True "
                               "(there are only 3 classes: circle, square, triangle)")
        self.num_objects = self.max_objects = int(num_objects)
        self.allow_repeats = bool(allow_repeats)
        self.antialias = bool(antialias)
        try:
            lo, hi = (float(v) for v in size_range)
        except (TypeError, ValueError):
            raise DatasetError(f"size_range must be two numbers, got {size_range!r}") from None
        if not 0 < lo <= hi:
            raise DatasetError(f"size_range must satisfy 0 < low <= high, got {size_range!r}")
        if hi >= 0.5:
            raise DatasetError(f"objects cannot fit: half-size up to {hi} of the image needs a "
                               "shape wider than the image (size_range high must be < 0.5)")
        if lo * self.image_size < 2.0:
            raise DatasetError(
                f"image too small: image_size={self.image_size} makes objects of half-size "
                f"{lo * self.image_size:.2f} px (< 2 px); use image_size >= {math.ceil(2 / lo)}")
        self.size_range = (lo, hi)
        self.name = f"sprites-{variant}"

    def config(self) -> dict:
        return dict(variant=self.variant, image_size=self.image_size,
                    num_objects=self.num_objects, allow_repeats=self.allow_repeats,
                    antialias=self.antialias, seed=self.seed, size_range=list(self.size_range))

    # ------------------------------------------------------------------------------------
    def _sample_params(self, idx: np.ndarray):
        b, n, size = idx.size, self.num_objects, self.image_size
        rng = ItemRNG(self.seed, idx)
        if self.allow_repeats:
            labels = rng.randint(0, 3, n)
        else:
            labels = rng.permutation(3)[:, :n]
        lo, hi = self.size_range
        s = rng.uniform_np(n, low=lo * size, high=hi * size)                 # (B, N)
        cand = rng.uniform_np(n, _NUM_CANDIDATES, 2)                          # (B, N, K, 2)
        # centre range [s, size - s] keeps every shape fully inside the image
        cand = s[:, :, None, None] + cand * (size - 2 * s)[:, :, None, None]
        centers = np.empty((b, n, 2))
        for i in range(n):
            if i == 0:
                pick = np.zeros(b, dtype=np.int64)
            else:
                d = np.sqrt(((cand[:, i, :, None, :] - centers[:, None, :i, :]) ** 2).sum(-1))
                ratio = (d / (s[:, None, i:i + 1] + s[:, None, :i])).min(-1)   # (B, K)
                ok = ratio >= 0.5
                pick = np.where(ok.any(-1), ok.argmax(-1), ratio.argmax(-1))
            centers[:, i] = cand[np.arange(b), i, pick]
        bg = rng.randint(0, 128, 3).float() / 255.0
        if self.variant == "unique":
            colors = torch.tensor(UNIQUE_COLORS, dtype=torch.float32)[labels] / 255.0
        else:
            colors = rng.randint(128, 256, n, 3).float() / 255.0
        return (labels, torch.from_numpy(s).float(), torch.from_numpy(centers).float(), bg,
                colors)

    def _generate(self, idx: np.ndarray) -> Batch:
        b, n, size = idx.size, self.num_objects, self.image_size
        labels, s, centers, bg, colors = self._sample_params(idx)
        cov = torch.empty(b * n, size, size)
        flat_labels = labels.reshape(-1)
        cx, cy, fs = centers[..., 0].reshape(-1), centers[..., 1].reshape(-1), s.reshape(-1)
        for cls in (CIRCLE, SQUARE, TRIANGLE):
            sel = (flat_labels == cls).nonzero().squeeze(1)
            if sel.numel():
                cov[sel] = shape_coverage(cls, cx[sel], cy[sel], fs[sel], size, self.antialias)
        cov = cov.view(b, n, size, size)
        image = bg[:, :, None, None].expand(b, 3, size, size).clone()
        for i in range(n):
            a = cov[:, i:i + 1]
            image = image + a * (colors[:, i, :, None, None] - image)
        masks = cov >= 0.5
        visible, seg = layer(masks)
        return {
            "image": image.clamp_(0, 1),
            "num_objects": torch.full((b,), n, dtype=torch.long),
            "valid": torch.ones(b, n, dtype=torch.bool),
            "boxes": boxes_from_masks(masks),
            "labels": labels.long(),
            "masks": masks,
            "visible_masks": visible,
            "segmentation": seg,
            "depth_order": torch.arange(n).expand(b, n).clone(),
            "background_color": bg,
            "colors": colors,
            "centers": centers,
            "sizes": s,
        }
