"""The datasets' structure rules, checked on detected objects (centres and classes) of one image.

Each rule returns ``(ok, reason)`` where ``reason`` is ``"ok"`` or a short description of the
first violated condition. Positions are in pixels of an image of size ``image_size``; the
geometric tolerances scale with it (they are given for 128 px images).

* MNIST-4 (:func:`rule_mnist4`): exactly four digits n, n+1, n+2, n+3; with (x, y) their
  centres, n must be top-left, n+1 top-right, n+2 bottom-right and n+3 bottom-left of an
  axis-aligned rectangle: TL/TR and BL/BR share a row and TL/BL and TR/BR share a column within
  ``tol`` (8.4 px = 0.3 digit patches), and the rectangle is at least ``min_side`` (14 px = half
  a patch) wide and tall.
* MNIST-10 (:func:`rule_mnist10`): exactly ten digits, each of 0..9 once; the groups {0,1},
  {2,3,4}, {5,6,7}, {8,9} each lie in a single image quadrant (by the digit centres), in four
  different quadrants, {0,1} and {8,9} on the top-left/bottom-right diagonal and {2,3,4} and
  {5,6,7} on the top-right/bottom-left one.
* MNIST-4-10 (:func:`rule_mnist4_10`): four digits -> the MNIST-4 rule, ten -> MNIST-10.
* Arrow (:func:`rule_arrow`): exactly three objects and one arrow; exactly two objects share a
  shape; of the three objects, the one whose direction from the arrow's centre is closest to the
  arrow's direction is the odd one, within ``max_angle`` (25 degrees).

Layout-only checks (:data:`LAYOUT_RULES`) judge positions alone, without digit classes, so they
need no trained checker: the necessary part of a rule that a model's own z^s (inferred or
generated) can be checked against cheaply during training. MNIST-4 (:func:`layout_mnist4`): four
objects on an axis-aligned rectangle (the MNIST-4 rule with the digits named clockwise from
top-left by position); MNIST-10 (:func:`layout_mnist10`): ten objects, 2, 3, 2 and 3 of them in
the TL, TR, BR and BL quadrants (the group sizes the MNIST-10 rule puts there).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

__all__ = ["rule_mnist4", "rule_mnist10", "rule_mnist4_10", "rule_arrow", "GROUPS", "QUADRANT_NAMES",
           "ARROW_CLASS", "layout_mnist4", "layout_mnist10", "layout_mnist4_10", "LAYOUT_RULES"]

GROUPS = ((0, 1), (2, 3, 4), (5, 6, 7), (8, 9))
QUADRANT_NAMES = ("TL", "TR", "BR", "BL")
#: class index of the arrow in the arrow checker (shapes are 0, 1, 2 as in the dataset)
ARROW_CLASS = 3

Result = Tuple[bool, str]


def _quadrant(x: float, y: float, size: float) -> int:
    left, top = x < size / 2, y < size / 2
    return {(True, True): 0, (False, True): 1, (False, False): 2, (True, False): 3}[(left, top)]


def rule_mnist4(centres: torch.Tensor, labels: torch.Tensor, image_size: int = 128,
                tol: float = 8.4, min_side: float = 14.0) -> Result:
    scale = image_size / 128
    tol, min_side = tol * scale, min_side * scale
    labels = [int(v) for v in torch.as_tensor(labels).tolist()]
    if len(labels) != 4:
        return False, f"{len(labels)} digits, expected 4"
    n = min(labels)
    if sorted(labels) != [n, n + 1, n + 2, n + 3]:
        return False, f"digits {sorted(labels)} are not four consecutive digits"
    pos = {lab: (float(c[0]), float(c[1])) for lab, c in zip(labels, torch.as_tensor(centres).tolist())}
    tl, tr, br, bl = pos[n], pos[n + 1], pos[n + 2], pos[n + 3]
    if abs(tl[1] - tr[1]) > tol or abs(bl[1] - br[1]) > tol:
        return False, "top or bottom pair not on one row"
    if abs(tl[0] - bl[0]) > tol or abs(tr[0] - br[0]) > tol:
        return False, "left or right pair not in one column"
    width = min(tr[0] - tl[0], br[0] - bl[0])
    height = min(bl[1] - tl[1], br[1] - tr[1])
    if width < min_side or height < min_side:
        return False, "digits not clockwise from top-left (or rectangle too small)"
    return True, "ok"


def rule_mnist10(centres: torch.Tensor, labels: torch.Tensor, image_size: int = 128) -> Result:
    labels = [int(v) for v in torch.as_tensor(labels).tolist()]
    if len(labels) != 10:
        return False, f"{len(labels)} digits, expected 10"
    if sorted(labels) != list(range(10)):
        return False, f"digits {sorted(labels)} are not 0..9 once each"
    quad = {lab: _quadrant(float(c[0]), float(c[1]), image_size)
            for lab, c in zip(labels, torch.as_tensor(centres).tolist())}
    gq = []
    for g in GROUPS:
        qs = {quad[d] for d in g}
        if len(qs) != 1:
            return False, f"group {g} split over quadrants {sorted(QUADRANT_NAMES[q] for q in qs)}"
        gq.append(qs.pop())
    if len(set(gq)) != 4:
        return False, "two groups share a quadrant"
    if {gq[0], gq[3]} != {0, 2}:
        return False, "groups {0,1} and {8,9} not on the TL/BR diagonal"
    if {gq[1], gq[2]} != {1, 3}:
        return False, "groups {2,3,4} and {5,6,7} not on the TR/BL diagonal"
    return True, "ok"


def rule_mnist4_10(centres: torch.Tensor, labels: torch.Tensor, image_size: int = 128) -> Result:
    n = int(torch.as_tensor(labels).numel())
    if n == 4:
        return rule_mnist4(centres, labels, image_size)
    if n == 10:
        return rule_mnist10(centres, labels, image_size)
    return False, f"{n} digits, expected 4 or 10"


def rule_arrow(centres: torch.Tensor, labels: torch.Tensor, direction: torch.Tensor,
               image_size: int = 128, max_angle: float = 25.0) -> Result:
    """``labels``: shape classes 0..2 and :data:`ARROW_CLASS`; ``direction``: (n, 2) arrow
    direction estimates (only the arrow's row is used)."""
    labels = torch.as_tensor(labels).long()
    centres = torch.as_tensor(centres, dtype=torch.float32)
    is_arrow = labels == ARROW_CLASS
    n_arrow, n_obj = int(is_arrow.sum()), int((~is_arrow).sum())
    if n_arrow != 1:
        return False, f"{n_arrow} arrows, expected 1"
    if n_obj != 3:
        return False, f"{n_obj} objects, expected 3"
    shapes = labels[~is_arrow]
    vals, counts = torch.unique(shapes, return_counts=True)
    if len(vals) != 2:
        return False, "all three shapes the same" if len(vals) == 1 else "three different shapes"
    odd_shape = vals[counts == 1][0]
    objs = centres[~is_arrow]
    a = centres[is_arrow][0]
    d = torch.as_tensor(direction, dtype=torch.float32)[is_arrow][0]
    if float(d.norm()) < 1e-6:
        return False, "arrow direction undetermined"
    d = d / d.norm()
    v = objs - a
    cos = (v @ d) / v.norm(dim=-1).clamp_min(1e-6)
    best = int(cos.argmax())
    angle = math.degrees(math.acos(max(-1.0, min(1.0, float(cos[best])))))
    if int(shapes[best]) != int(odd_shape):
        return False, "arrow points at a shape that is not the odd one"
    if angle > max_angle:
        return False, f"arrow misses the odd object by {angle:.0f} degrees"
    return True, "ok"


# ---------------------------------------------------------------------------------------------
# layout only (positions, no classes)

def layout_mnist4(centres: torch.Tensor, image_size: int = 128, tol: float = 8.4, min_side: float = 14.0) -> Result:
    """Four objects on an axis-aligned rectangle: :func:`rule_mnist4` with the objects labelled
    clockwise from top-left by position (the two upper ones are the top row)."""
    c = torch.as_tensor(centres, dtype=torch.float32).reshape(-1, 2)
    if len(c) != 4:
        return False, f"{len(c)} objects, expected 4"
    order = torch.argsort(c[:, 1], stable=True)
    top, bottom = order[:2], order[2:]
    top = top[torch.argsort(c[top, 0], stable=True)]
    bottom = bottom[torch.argsort(c[bottom, 0], stable=True)]
    labels = torch.empty(4, dtype=torch.long)
    labels[top[0]], labels[top[1]], labels[bottom[1]], labels[bottom[0]] = 0, 1, 2, 3
    return rule_mnist4(c, labels, image_size, tol, min_side)


def layout_mnist10(centres: torch.Tensor, image_size: int = 128) -> Result:
    """Ten objects, 2 / 3 / 2 / 3 of them in the TL / TR / BR / BL quadrants."""
    c = torch.as_tensor(centres, dtype=torch.float32).reshape(-1, 2)
    if len(c) != 10:
        return False, f"{len(c)} objects, expected 10"
    counts = [0, 0, 0, 0]
    for x, y in c.tolist():
        counts[_quadrant(x, y, image_size)] += 1
    if counts != [2, 3, 2, 3]:
        return False, "quadrant counts " + ", ".join(f"{q} {n}" for q, n in zip(QUADRANT_NAMES, counts)) + ", expected 2, 3, 2, 3"
    return True, "ok"


def layout_mnist4_10(centres: torch.Tensor, image_size: int = 128) -> Result:
    n = len(torch.as_tensor(centres).reshape(-1, 2))
    if n == 4:
        return layout_mnist4(centres, image_size)
    if n == 10:
        return layout_mnist10(centres, image_size)
    return False, f"{n} objects, expected 4 or 10"


#: dataset -> layout-only check ``(centres (n, 2) pixels, image_size) -> (ok, reason)``
LAYOUT_RULES = {"mnist4": layout_mnist4, "mnist10": layout_mnist10, "mnist4-10": layout_mnist4_10}
