"""Deliberately broken scenes, to measure how well the structure checkers reject them.

Multi-digit scenes are re-rendered from a real scene's layout (digit labels and patch centres,
as the generator places them) after one corruption; the digits are new instances from the
dataset's own digit source, pasted and composed additively like the generator does:

* ``swapped``: two digits exchange positions (MNIST-10: two digits of different groups);
* ``missing``: one digit removed;
* ``doubled``: a copy of one of the digits added at a free position (five / eleven digits);
* ``replaced``: one digit replaced by a copy of another digit of the scene;
* ``moved`` (MNIST-4 scenes): one digit moved to a free position at least 0.6 patch from its
  corner in x or y;
* ``wrong-quadrant`` (MNIST-10 scenes): one digit moved to a free position in another quadrant;
* ``groups-swapped`` (MNIST-10 scenes): a 2-digit group and a 3-digit group exchange quadrants.

"Free" means at least one patch (28 px at 128) from every other digit patch in x or y, so digits
do not overlap. ``control`` re-renders the layout unchanged (it must be accepted).

Arrow scenes are edited: the arrow is erased by diffusion in-painting of its (dilated) mask and,
for ``wrong-object``, a new arrow of the same centre, length, shape and colour is painted pointing
at one of the two objects that share a shape; ``no-arrow`` only erases it.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

__all__ = ["corrupt", "corruption_kinds", "applicable"]

_MNIST4 = ("swapped", "missing", "doubled", "replaced", "moved")
_MNIST10 = ("swapped", "missing", "doubled", "replaced", "wrong-quadrant", "groups-swapped")
_ONLY4 = {"moved"}
_ONLY10 = {"wrong-quadrant", "groups-swapped"}
_GROUPS = ((0, 1), (2, 3, 4), (5, 6, 7), (8, 9))


def corruption_kinds(dataset: str) -> Tuple[str, ...]:
    if dataset == "mnist4":
        return _MNIST4
    if dataset == "mnist10":
        return _MNIST10
    if dataset == "mnist4-10":
        return ("swapped", "missing", "doubled", "replaced", "moved", "wrong-quadrant", "groups-swapped")
    if dataset == "arrow":
        return ("wrong-object", "no-arrow")
    raise ValueError(f"no broken scenes for dataset {dataset!r}")


def applicable(batch: Dict[str, torch.Tensor], kind: str) -> torch.Tensor:
    """(B,) bool: the scenes a corruption applies to (MNIST-4-only / MNIST-10-only kinds)."""
    b = batch["image"].shape[0]
    if "variant_id" not in batch:
        return torch.ones(b, dtype=torch.bool)
    v = batch["variant_id"]
    if kind in _ONLY4:
        return v == 0
    if kind in _ONLY10:
        return v == 1
    return torch.ones(b, dtype=torch.bool)


# ---------------------------------------------------------------------------------------------
# multi-digit

def _free_position(others: List[Tuple[float, float]], lo: Tuple[float, float], hi: Tuple[float, float],
                   min_dist: float, gen: torch.Generator, avoid=None, avoid_dist: float = 0.0):
    """A random integer centre in [lo, hi] at least ``min_dist`` (L-inf) from ``others``."""
    best, best_d = None, -1.0
    for _ in range(200):
        x = float(torch.randint(int(math.ceil(lo[0])), int(math.floor(hi[0])) + 1, (1,), generator=gen))
        y = float(torch.randint(int(math.ceil(lo[1])), int(math.floor(hi[1])) + 1, (1,), generator=gen))
        if avoid is not None and max(abs(x - avoid[0]), abs(y - avoid[1])) < avoid_dist:
            continue
        d = min((max(abs(x - ox), abs(y - oy)) for ox, oy in others), default=float("inf"))
        if d >= min_dist:
            return x, y
        if d > best_d:
            best, best_d = (x, y), d
    return best


def _quadrant_of(x: float, y: float, size: int) -> int:
    left, top = x < size / 2, y < size / 2
    return {(True, True): 0, (False, True): 1, (False, False): 2, (True, False): 3}[(left, top)]


def _quadrant_bounds(q: int, size: int, p: int):
    half = size // 2
    x0, y0 = (0, 0) if q == 0 else (half, 0) if q == 1 else (half, half) if q == 2 else (0, half)
    x1 = half if q in (0, 3) else size
    y1 = half if q in (0, 1) else size
    return (x0 + p / 2, y0 + p / 2), (x1 - p / 2, y1 - p / 2)


def _corrupt_layout(labels: List[int], centres: List[Tuple[float, float]], is10: bool, kind: str, size: int, p: int,
                    gen: torch.Generator):
    labels, centres = list(labels), list(centres)
    n = len(labels)

    def pick(k):
        return int(torch.randint(k, (1,), generator=gen))

    if kind == "control":
        return labels, centres
    if kind == "swapped":
        return _swap_two(labels, is10, pick), centres
    if kind == "missing":
        i = pick(n)
        return labels[:i] + labels[i + 1:], centres[:i] + centres[i + 1:]
    if kind == "doubled":
        i = pick(n)
        pos = _free_position(centres, (p / 2, p / 2), (size - p / 2, size - p / 2), p, gen)
        return labels + [labels[i]], centres + [pos]
    if kind == "replaced":
        i = pick(n)
        j = (i + 1 + pick(n - 1)) % n
        labels[j] = labels[i]
        return labels, centres
    if kind == "moved":
        i = pick(n)
        others = centres[:i] + centres[i + 1:]
        pos = _free_position(others, (p / 2, p / 2), (size - p / 2, size - p / 2), p, gen, avoid=centres[i],
                             avoid_dist=0.6 * p)
        centres[i] = pos
        return labels, centres
    if kind == "wrong-quadrant":
        i = pick(n)
        q = _quadrant_of(*centres[i], size)
        q2 = (q + 1 + pick(3)) % 4
        others = centres[:i] + centres[i + 1:]
        centres[i] = _free_position(others, *_quadrant_bounds(q2, size, p), p, gen)
        return labels, centres
    if kind == "groups-swapped":
        return labels, _swap_groups(labels, centres, size, p, pick)
    raise ValueError(f"unknown corruption {kind!r}")


def _swap_two(labels: List[int], is10: bool, pick) -> List[int]:
    """``labels`` with two digits exchanged (for MNIST-10, two of different groups)."""
    n = len(labels)
    if is10:
        while True:
            i, j = pick(n), pick(n)
            gi = next(g for g, grp in enumerate(_GROUPS) if labels[i] in grp)
            gj = next(g for g, grp in enumerate(_GROUPS) if labels[j] in grp)
            if gi != gj:
                break
    else:
        i = pick(n)
        j = (i + 1 + pick(n - 1)) % n
    labels[i], labels[j] = labels[j], labels[i]
    return labels


def _swap_groups(labels: List[int], centres: List[Tuple[float, float]], size: int, p: int, pick) -> List[Tuple[float, float]]:
    """``centres`` with a 2-digit group and a 3-digit group moved into each other's quadrants (MNIST-10)."""
    g2 = (0, 3)[pick(2)]
    g3 = (1, 2)[pick(2)]
    members = {g: [k for k, lab in enumerate(labels) if lab in _GROUPS[g]] for g in (g2, g3)}
    qa = _quadrant_of(*centres[members[g2][0]], size)
    qb = _quadrant_of(*centres[members[g3][0]], size)
    (ax, ay), _ = _quadrant_bounds(qa, size, p)
    (bx, by), _ = _quadrant_bounds(qb, size, p)
    for k in members[g2]:
        centres[k] = (centres[k][0] - ax + bx, centres[k][1] - ay + by)
    for k in members[g3]:
        centres[k] = (centres[k][0] - bx + ax, centres[k][1] - by + ay)
    return centres


def render_digits(source, layouts: List[Tuple[List[int], List[Tuple[float, float]]]], size: int, p: int,
                  gen: torch.Generator) -> torch.Tensor:
    """Render layouts (digit labels, patch centres) like the generator: (B, 1, size, size)."""
    b = len(layouts)
    img = torch.zeros(b, size, size)
    rows = [(i, lab, c) for i, (labs, cs) in enumerate(layouts) for lab, c in zip(labs, cs)]
    if not rows:
        return img[:, None]
    idx = torch.tensor([r[0] for r in rows])
    labels = torch.tensor([r[1] for r in rows])
    tl = torch.tensor([[r[2][0] - p / 2, r[2][1] - p / 2] for r in rows]).round().long()
    tl[:, 0].clamp_(0, size - p)
    tl[:, 1].clamp_(0, size - p)
    u = torch.rand(len(rows), generator=gen, dtype=torch.float64)
    digits = source.select(labels, u, p)
    ar = torch.arange(p)
    ys = (tl[:, 1, None, None] + ar[None, :, None]).expand(-1, p, p)
    xs = (tl[:, 0, None, None] + ar[None, None, :]).expand(-1, p, p)
    bi = idx[:, None, None].expand(-1, p, p)
    img.index_put_((bi, ys, xs), digits.float(), accumulate=True)
    return img.clamp_(0, 1)[:, None]


def _corrupt_digits(ds, batch, kind, gen) -> torch.Tensor:
    size, p = ds.image_size, ds.patch
    layouts = []
    for i in range(batch["image"].shape[0]):
        v = batch["valid"][i]
        labels = batch["labels"][i][v].tolist()
        centres = [tuple(c) for c in batch["centers"][i][v].tolist()]
        is10 = len(labels) == 10
        use = kind if (kind not in _ONLY4 or not is10) and (kind not in _ONLY10 or is10) else "control"
        layouts.append(_corrupt_layout(labels, centres, is10, use, size, p, gen))
    return render_digits(ds.digit_source, layouts, size, p, gen)


# ---------------------------------------------------------------------------------------------
# arrow

def _arrow_constants():
    try:
        from datasets import arrow as _a
        return _a._ARROW_SHAFT, _a._ARROW_HEAD_LEN, _a._ARROW_HEAD
    except (ImportError, AttributeError):  # pragma: no cover - the generator's values
        return 0.022, 0.075, 0.055


def inpaint(images: torch.Tensor, mask: torch.Tensor, iters: int = 80) -> torch.Tensor:
    """Fill ``mask`` (B, H, W) pixels of ``images`` (B, C, H, W) by diffusion from the border."""
    x = images.clone()
    m = mask[:, None].float()
    ring = (F.max_pool2d(m, 5, 1, 2) - m).clamp(0, 1)
    fill = (x * ring).sum((2, 3), keepdim=True) / ring.sum((2, 3), keepdim=True).clamp_min(1)
    x = torch.where(m > 0, fill.expand_as(x), x)
    for _ in range(iters):
        avg = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
        x = torch.where(m > 0, avg, x)
    return x


def paint_arrow(images: torch.Tensor, centre: torch.Tensor, direction: torch.Tensor, length: torch.Tensor,
                colour: torch.Tensor) -> torch.Tensor:
    """Paint arrows like the generator: centre (B, 2), unit direction (B, 2), length (B,), colour (B, C)."""
    b, c, h, w = images.shape
    shaft, head_len, head = _arrow_constants()
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w) + 0.5
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1) + 0.5
    ax, ay = centre[:, 0].view(b, 1, 1), centre[:, 1].view(b, 1, 1)
    ux, uy = direction[:, 0].view(b, 1, 1), direction[:, 1].view(b, 1, 1)
    u = (xs - ax) * ux + (ys - ay) * uy
    v = ((ys - ay) * ux - (xs - ax) * uy).abs()
    half = (length / 2).view(b, 1, 1)
    hl, hh, sw = head_len * w, head * w, shaft * w
    sd_shaft = torch.maximum(torch.maximum(-half - u, u - (half - hl)), v - sw)
    norm = math.sqrt(hl * hl + hh * hh)
    sd_head = torch.maximum((half - hl) - u, (v * hl - hh * (half - u)) / norm)
    cov = (0.5 - torch.minimum(sd_shaft, sd_head)).clamp(0, 1)[:, None]
    return images + cov * (colour[:, :, None, None] - images)


def _corrupt_arrow(batch, kind, gen) -> torch.Tensor:
    img = batch["image"].float()
    b = img.shape[0]
    mask = batch["arrow_mask"]
    if kind == "control":
        return img.clone()
    grown = F.max_pool2d(mask[:, None].float(), 5, 1, 2)[:, 0] > 0
    erased = inpaint(img, grown)
    if kind == "no-arrow":
        return erased
    if kind != "wrong-object":
        raise ValueError(f"unknown corruption {kind!r}")
    tail, tip = batch["arrow_tail"].float(), batch["arrow_tip"].float()
    centre = (tail + tip) / 2
    length = (tip - tail).norm(dim=-1)
    odd = batch["odd_index"]
    other = (odd + 1 + torch.randint(0, 2, (b,), generator=gen)) % 3
    target = batch["centers"][torch.arange(b), other].float()
    d = target - centre
    d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    m = mask[:, None].float()
    colour = (img * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1)
    return paint_arrow(erased, centre, d, length, colour).clamp(0, 1)


def corrupt(ds, batch: Dict[str, torch.Tensor], kind: str, gen: torch.Generator) -> torch.Tensor:
    """Images (B, C, H, W) of ``batch``'s scenes (generated by ``ds``) after corruption ``kind``.

    Scenes a kind does not apply to (see :func:`applicable`) are re-rendered unchanged.
    """
    if "arrow_mask" in batch:
        return _corrupt_arrow(batch, kind, gen)
    return _corrupt_digits(ds, batch, kind, gen)

