"""GNM's multi-digit scenes: MNIST-4, MNIST-10 and their mix MNIST-4-10 (rules in docs/datasets.md)."""
from __future__ import annotations

import os

import numpy as np
import torch

from ._rng import ItemRNG
from .base import Batch, SceneDataset, boxes_from_masks, check_int, layer
from .digits import DIGIT_SIZE, default_digit_source
from .errors import DatasetError

VARIANTS = ("mnist4", "mnist10", "mnist4-10")
#: quadrant ids, clockwise from top-left (the same order as the MNIST-4 corners)
TL, TR, BR, BL = 0, 1, 2, 3
_GROUPS = ((0, 1), (2, 3, 4), (5, 6, 7), (8, 9))
_NUM_CANDIDATES = 16
_MIN_DIST = 0.8  # in digit-patch sizes, between digits of one MNIST-10 quadrant (if possible)


class MultiDigit(SceneDataset):
    """GNM multi-digit scenes on a black background (rules in docs/datasets.md, "GNM multi-digit scenes").

    * ``mnist4``: digits n, n+1, n+2, n+3 (n uniform in 0..6) centred on the corners of an
      axis-aligned rectangle with random position, width and height, clockwise from top-left
      (TL n, TR n+1, BR n+2, BL n+3).  Width and height are uniform in [p, S - p] (p = digit
      patch size, S = image size), so patches never overlap and stay inside the image.
    * ``mnist10``: all ten digits; groups {0,1}, {2,3,4}, {5,6,7}, {8,9}, one per quadrant: the
      two 2-digit groups on the TL/BR diagonal and the two 3-digit groups on TR/BL, each pair
      either way round (fair coin); positions uniform inside the quadrant (patch fully inside
      the quadrant; among 16 fixed candidates the first at least 0.8 p from the digits placed
      before is used, else the farthest).
    * ``mnist4-10``: each scene is MNIST-4 or MNIST-10 with probability 1/2.

    Digits are 28x28 patches (about 20 px of ink tall, as MNIST) at 128 px, scaled by
    ``image_size / 128 * digit_scale``; they are pasted at integer pixel offsets and composed
    additively, clipped to [0, 1]; 1 channel.

    Args:
        digit_source: an object with ``select(labels, u, size)`` such as
            :class:`datasets.digits.IDXDigits` / :class:`~datasets.digits.SyntheticDigits`, used
            as given, or a path to MNIST IDX files, or ``None`` (``$PYRO_SCENES_MNIST`` if set,
            else synthetic digits, logged).  A path or ``None`` gives the digits of the dataset's
            ``split`` (:func:`datasets.digits.default_digit_source`; ``"train"`` until
            :func:`~datasets.make_dataset` sets it), so that the training, validation and test
            scenes never share a digit.

    Item keys (N = ``max_objects``: 4 for mnist4, 10 otherwise; H = W = ``image_size``):
        ``image`` float (1, H, W); ``num_objects`` long () (4 or 10); ``valid`` bool (N,);
        ``boxes`` float (N, 4) tight (x0, y0, x1, y1) box of the digit mask, x1/y1 exclusive;
        ``labels`` long (N,) digit 0..9 (-1 padding); ``masks`` bool (N, H, W) digit pixels with
        intensity >= 0.5; ``visible_masks`` bool (N, H, W): with additive composition there is
        no real occlusion, so by convention a digit listed later is "above": visible = own mask
        minus the masks of all digits listed after it; ``segmentation`` long (H, W) 0
        background, i + 1 digit i; ``variant_id`` long () 0 = MNIST-4 scene, 1 = MNIST-10
        scene; ``rule_params`` long (5,): [n, quadrant of {0,1}, of {2,3,4}, of {5,6,7}, of
        {8,9}] with quadrants 0 TL, 1 TR, 2 BR, 3 BL, -1 where not applicable (n for MNIST-10
        scenes, quadrants for MNIST-4 scenes); ``centers`` float (N, 2) (x, y) patch centres.
        Objects are listed TL, TR, BR, BL (labels n..n+3) for MNIST-4 and by digit 0..9 for
        MNIST-10.  Padded entries: label -1, zero boxes/centres, empty masks, ``valid`` False.
    """

    num_channels = 1

    def __init__(self, num_scenes: int, variant: str = "mnist4", image_size: int = 128,
                 seed: int = 0, digit_source=None, digit_scale: float = 1.0) -> None:
        super().__init__(num_scenes, seed)
        if variant not in VARIANTS:
            raise DatasetError(f"unknown multi-digit variant {variant!r}; valid variants: "
                               f"{', '.join(VARIANTS)}")
        self.variant = self.name = variant
        self.image_size = check_int("image_size", image_size, 1)
        try:
            self.digit_scale = float(digit_scale)
        except (TypeError, ValueError):
            raise DatasetError(f"digit_scale must be a number, got {digit_scale!r}") from None
        if not self.digit_scale > 0:
            raise DatasetError(f"digit_scale must be > 0, got {digit_scale!r}")
        p = int(round(DIGIT_SIZE * self.image_size / 128 * self.digit_scale))
        if p < 8:
            raise DatasetError(
                f"image too small: image_size={self.image_size} (digit_scale "
                f"{self.digit_scale}) gives {p} px digit patches; digits need >= 8 px "
                f"(image_size >= {int(np.ceil(8 * 128 / DIGIT_SIZE / self.digit_scale))})")
        if 2 * p > self.image_size:
            raise DatasetError(
                f"digits cannot fit: {p} px digit patches need an image of at least {2 * p} px "
                f"for the MNIST-4 corners / MNIST-10 quadrants, got {self.image_size}")
        self.patch = p
        self.max_objects = 4 if variant == "mnist4" else 10
        self._split = None
        self._digits_per_split = (digit_source is None
                                  or isinstance(digit_source, (str, os.PathLike)))
        if self._digits_per_split:
            self._digit_path = digit_source
            digit_source = default_digit_source(digit_source, "train")
        if not hasattr(digit_source, "select"):
            raise DatasetError(f"digit_source must be a digit source (IDXDigits, "
                               f"SyntheticDigits) or a path, got {digit_source!r}")
        self.digit_source = digit_source
        # big canvases: keep chunks around 64 MB of masks
        self.chunk_size = max(8, int(2 ** 26 // (self.max_objects * self.image_size ** 2)))

    @property
    def split(self) -> str | None:
        """The split set by :func:`~datasets.make_dataset`; setting it picks that split's digits
        unless a digit source object was given."""
        return self._split

    @split.setter
    def split(self, split: str | None) -> None:
        self._split = split
        if self._digits_per_split:
            self.digit_source = default_digit_source(self._digit_path, split or "train")

    def config(self) -> dict:
        src = self.digit_source
        src_cfg = src.config() if hasattr(src, "config") else repr(src)
        return dict(variant=self.variant, image_size=self.image_size, seed=self.seed,
                    digit_scale=self.digit_scale, digit_source=src_cfg)

    # ------------------------------------------------------------------------------------
    def _layout(self, idx: np.ndarray):
        """Labels, patch top-left corners and rule parameters (fixed draws per scene)."""
        b, S, p = idx.size, self.image_size, self.patch
        rng = ItemRNG(self.seed, idx)
        is10 = rng.bernoulli(0.5)                                          # (B,)
        if self.variant == "mnist4":
            is10 = torch.zeros_like(is10)
        elif self.variant == "mnist10":
            is10 = torch.ones_like(is10)
        # -- MNIST-4
        n = rng.randint(0, 7)                                               # (B,)
        wh = rng.uniform_np(2)                                              # (B, 2)
        wh = p + wh * (S - 2 * p)                                           # in [p, S - p]
        xy = rng.uniform_np(2)
        c0 = p / 2 + xy * (S - p - wh)                                      # TL centre
        cx = np.stack([c0[:, 0], c0[:, 0] + wh[:, 0], c0[:, 0] + wh[:, 0], c0[:, 0]], 1)
        cy = np.stack([c0[:, 1], c0[:, 1], c0[:, 1] + wh[:, 1], c0[:, 1] + wh[:, 1]], 1)
        tl4 = np.stack([np.rint(cx - p / 2), np.rint(cy - p / 2)], -1)    # (B, 4, 2)
        labels4 = n[:, None] + torch.arange(4)
        # -- MNIST-10
        swap2 = rng.bernoulli(0.5)
        swap3 = rng.bernoulli(0.5)
        q01 = torch.where(swap2, BR, TL)
        q89 = torch.where(swap2, TL, BR)
        q234 = torch.where(swap3, BL, TR)
        q567 = torch.where(swap3, TR, BL)
        quad_of_group = torch.stack([q01, q234, q567, q89], 1)             # (B, 4)
        group_of_digit = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 3, 3])
        quad = quad_of_group[:, group_of_digit]                             # (B, 10)
        half = S // 2
        qx = torch.tensor([0, half, half, 0])[quad].numpy()
        qy = torch.tensor([0, 0, half, half])[quad].numpy()
        qw = np.array([half, S - half, S - half, half])[quad.numpy()]       # quadrant sizes
        qh = np.array([half, half, S - half, S - half])[quad.numpy()]
        cand = rng.uniform_np(10, _NUM_CANDIDATES, 2)                       # (B, 10, K, 2)
        cand_x = qx[:, :, None] + p / 2 + cand[..., 0] * (qw - p)[:, :, None]
        cand_y = qy[:, :, None] + p / 2 + cand[..., 1] * (qh - p)[:, :, None]
        cands = np.stack([cand_x, cand_y], -1)
        centers10 = np.empty((b, 10, 2))
        ar = np.arange(b)
        for d in range(10):
            if d in (0, 2, 5, 8):       # first digit of its group (alone in its quadrant)
                pick = np.zeros(b, dtype=np.int64)
            else:
                first = max(g[0] for g in _GROUPS if g[0] <= d)
                prev = centers10[:, first:d]                                # same quadrant
                dist = np.sqrt(((cands[:, d, :, None] - prev[:, None]) ** 2).sum(-1)).min(-1)
                ok = dist >= _MIN_DIST * p
                pick = np.where(ok.any(-1), ok.argmax(-1), dist.argmax(-1))
            centers10[:, d] = cands[ar, d, pick]
        tl10 = np.rint(centers10 - p / 2)
        # -- combine (pad MNIST-4 to max_objects)
        m = self.max_objects
        labels = torch.full((b, m), -1, dtype=torch.long)
        tl = np.zeros((b, m, 2))
        valid = torch.zeros(b, m, dtype=torch.bool)
        four = ~is10
        labels[four, :4] = labels4[four]
        tl[four.numpy(), :4] = tl4[four.numpy()]
        valid[four, :4] = True
        if m == 10:
            labels[is10] = torch.arange(10)
            tl[is10.numpy()] = tl10[is10.numpy()]
            valid[is10] = True
        rule = torch.full((b, 5), -1, dtype=torch.long)
        rule[four, 0] = n[four]
        rule[is10, 1:] = quad_of_group[is10]
        u = rng.uniform(m, dtype=torch.float64)                             # digit instances
        return labels, torch.from_numpy(tl).long(), valid, is10.long(), rule, u

    def _generate(self, idx: np.ndarray) -> Batch:
        b, S, p, m = idx.size, self.image_size, self.patch, self.max_objects
        labels, tl, valid, variant_id, rule, u = self._layout(idx)
        image = torch.zeros(b, S, S)
        masks = torch.zeros(b, m, S, S, dtype=torch.bool)
        boxes = torch.zeros(b, m, 4)
        ar = torch.arange(p)
        for j in range(m):
            bsel = valid[:, j].nonzero().squeeze(1)
            if bsel.numel() == 0:
                continue
            digits = self.digit_source.select(labels[bsel, j], u[bsel, j], p)  # (V, p, p)
            ys = tl[bsel, j, 1, None, None] + ar[None, :, None]
            xs = tl[bsel, j, 0, None, None] + ar[None, None, :]
            bi = bsel[:, None, None]
            image[bi, ys, xs] = image[bi, ys, xs] + digits
            dm = digits >= 0.5
            masks[bi, j, ys, xs] = dm
            box = boxes_from_masks(dm)
            off = tl[bsel, j].float().repeat(1, 2)
            boxes[bsel, j] = torch.where(dm.flatten(1).any(1, keepdim=True), box + off, box)
        visible, seg = layer(masks)
        centers = (tl.float() + p / 2) * valid[..., None]
        return {
            "image": image.clamp_(0, 1)[:, None],
            "num_objects": valid.sum(1),
            "valid": valid,
            "boxes": boxes,
            "labels": labels,
            "masks": masks,
            "visible_masks": visible,
            "segmentation": seg,
            "variant_id": variant_id,
            "rule_params": rule,
            "centers": centers,
        }
