"""A small object-centre detector and classifier for the structure checkers.

``CropNet`` classifies a 38x38 crop into "no object centred here" (class 0) or "an object of
class c is centred within about 4 px of the crop centre" (class c + 1), regresses the offset
from the crop centre to the object centre (in units of 8 px) and, optionally, extra per-object
values (the arrow's direction). It uses only valid (unpadded) convolutions -- 4x4 stride 2,
3x3, 2x2 max pool, 3x3, 2x2 max pool (38 -> 18 -> 16 -> 8 -> 6 -> 3), each conv with batch
norm and ReLU -- and a 3x3 "fully connected" layer, so in eval mode it is exactly
translation-equivariant with stride 8: trained on crops, it is run densely over a whole
(padded) image, giving one prediction per 8 px cell (:meth:`CropNet.dense`).

Training crops (from the dataset generator's own scenes): half are centred on a random object
with a uniform jitter of up to 4 px per axis (label = its class: the cell whose 8 px square
contains the object centre is the one that must fire), a quarter 6-16 px (per axis, max norm)
from a random object and a quarter at uniformly random positions; these are background when
every object centre is more than 5.5 px away per axis (ignored between 4.5 and 5.5 px). Photometric augmentation (gain, blur, noise) makes the
detector robust to imperfect generations. Style augmentation (:func:`style_warp`, for checkers
trained on synthetic digits) makes it read other handwriting: each crop is slanted, rotated and
scaled about its centre, elastically distorted and its strokes thinned or thickened; the targets
follow the moved object centres.

Decoding (:func:`decode`): every cell whose foreground probability ``1 - p(background)``
exceeds ``vote_threshold`` (0.15) votes for an object at ``cell centre + 8 * offset``; in order
of decreasing foreground probability, a vote joins the first group whose position (that of its
strongest vote) is closer than ``merge_radius`` px, else starts a new one. A group is a
detection when the noisy-or of its votes exceeds ``threshold`` (0.5) (an object centred on a
cell boundary gets two half-confident votes). A detection's class is the arg-max of its votes'
class probabilities weighted by their foreground probabilities (extras likewise averaged).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

CROP = 38
HALF = CROP // 2  # crop centre (continuous pixel coordinate) relative to the crop origin
STRIDE = 8
#: a crop is positive for an object whose centre is within this many px (per axis) of its centre
POS_RADIUS = 4


class CropNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, num_extra: int = 0, width: int = 32) -> None:
        super().__init__()
        self.in_channels, self.num_classes, self.num_extra, self.width = in_channels, num_classes, num_extra, width
        w = width

        def block(cin, cout, k, stride=1):
            return [nn.Conv2d(cin, cout, k, stride, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(in_channels, w, 4, 2),            # 38 -> 18
            *block(w, w, 3), nn.MaxPool2d(2),        # 16 -> 8
            *block(w, 2 * w, 3), nn.MaxPool2d(2),    # 6 -> 3
            *block(2 * w, 128, 3),                   # 3 -> 1: the "fully connected" layer
        )
        self.head = nn.Conv2d(128, 1 + num_classes + 2 + num_extra, 1)

    def _split(self, out: torch.Tensor):
        k = 1 + self.num_classes
        return out[:, :k], out[:, k:k + 2], out[:, k + 2:]

    def forward(self, crops: torch.Tensor):
        """Crops (B, C, 38, 38) -> logits (B, 1 + K), offset (B, 2), extra (B, E)."""
        logits, off, ext = self._split(self.head(self.features(crops)))
        return logits[:, :, 0, 0], off[:, :, 0, 0], ext[:, :, 0, 0]

    def dense(self, images: torch.Tensor, pad_mode: str = "constant"):
        """Images (B, C, H, W) -> per-cell logits (B, 1 + K, h, w), offsets, extras.

        The image is padded by 19 px so cell (i, j) is the crop centred at pixel (8 j, 8 i).
        """
        x = F.pad(images, (HALF, HALF + STRIDE - 1, HALF, HALF + STRIDE - 1), mode=pad_mode)
        return self._split(self.head(self.features(x)))

    def hparams(self) -> Dict:
        return dict(in_channels=self.in_channels, num_classes=self.num_classes, num_extra=self.num_extra,
                    width=self.width)


@dataclass
class Detections:
    centres: torch.Tensor  # (n, 2) x, y pixels (working scale)
    labels: torch.Tensor   # (n,) long
    scores: torch.Tensor   # (n,)
    extras: torch.Tensor   # (n, E)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def scaled(self, factor: float) -> "Detections":
        return Detections(self.centres * factor, self.labels, self.scores, self.extras)


def decode(logits: torch.Tensor, offsets: torch.Tensor, extras: torch.Tensor, threshold: float = 0.5,
           merge_radius: float = 10.0, vote_threshold: float = 0.15) -> List[Detections]:
    """Detections per image from :meth:`CropNet.dense` outputs (see module docstring)."""
    p = logits.float().softmax(1)
    fg = 1 - p[:, 0]
    b, h, w = fg.shape
    out = []
    for i in range(b):
        ii, jj = (fg[i] > vote_threshold).nonzero(as_tuple=True)
        base = torch.stack([jj.float() * STRIDE, ii.float() * STRIDE], -1)
        cen = base + STRIDE * offsets[i, :, ii, jj].T.float()
        score = fg[i, ii, jj]
        probs = p[i, 1:, ii, jj].T  # (n, K)
        ext = extras[i, :, ii, jj].T.float() if extras.shape[1] else torch.zeros(len(ii), 0)
        order = torch.argsort(score, descending=True, stable=True).tolist()
        groups: List[List[int]] = []
        for k in order:
            for g in groups:
                if float((cen[k] - cen[g[0]]).norm()) < merge_radius:
                    g.append(k)
                    break
            else:
                groups.append([k])
        n = len(groups)
        centres = torch.zeros(n, 2)
        labels = torch.zeros(n, dtype=torch.long)
        scores = torch.zeros(n)
        extra = torch.zeros(n, ext.shape[1])
        for g_i, g in enumerate(groups):
            idx = torch.tensor(g)
            wgt = score[idx][:, None]
            centres[g_i] = cen[g[0]]
            labels[g_i] = int((probs[idx] * wgt).sum(0).argmax())
            scores[g_i] = 1 - torch.prod(1 - score[idx])  # noisy-or of the votes
            extra[g_i] = (ext[idx] * wgt).sum(0) / wgt.sum()
        keep = scores > threshold
        out.append(Detections(centres[keep], labels[keep], scores[keep], extra[keep]))
    return out


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Photometric augmentation that mimics imperfect generations: random gain, blur, noise."""
    b = x.shape[0]
    x = x * (0.65 + 0.45 * torch.rand(b, 1, 1, 1, generator=gen))
    blur = torch.rand(b, generator=gen) < 0.4
    if blur.any():
        k = torch.tensor([0.25, 0.5, 0.25])
        k2 = (k[:, None] * k[None, :]).view(1, 1, 3, 3).repeat(x.shape[1], 1, 1, 1)
        x = x.clone()
        x[blur] = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), k2, groups=x.shape[1])
    sd = torch.rand(b, 1, 1, 1, generator=gen) * 0.06
    return (x + sd * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def style_matrices(n: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 2, 2) random output-to-input maps about a crop's centre for :func:`style_warp`: slant
    (x shifted by -0.5..0.25 times y, y down: mostly leaning right, as MNIST's writers do),
    rotation +-12 deg, scale 0.85..1.15 per axis (docs/gnm.md, "S-Acc across handwriting
    styles")."""
    u = torch.rand(n, 5, generator=gen) * 2 - 1
    shear, ang = 0.375 * u[:, 0] - 0.125, math.radians(12) * u[:, 1]
    sx, sy = 1 + 0.15 * u[:, 2], 1 + 0.15 * u[:, 3]
    cos, sin = torch.cos(ang), torch.sin(ang)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shr = torch.zeros(n, 2, 2)
    shr[:, 0, 0], shr[:, 0, 1], shr[:, 1, 1] = 1.0, shear, 1.0
    scl = torch.diag_embed(torch.stack([sx, sy], -1))
    return torch.linalg.inv(rot @ shr @ scl)


def style_warp(crops: torch.Tensor, maps: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Crops (B, C, 38, 38) warped by ``maps`` (:func:`style_matrices`) plus a smooth elastic
    displacement of up to about 1.5 px that leaves the centre in place, then strokes thickened
    (soft 3x3 dilation) or thinned (erosion) by a random amount, as the synthetic digits'
    stroke-width distortion does (:class:`datasets.digits.SyntheticDigits`)."""
    b, c, h, w = crops.shape
    theta = torch.cat([maps, torch.zeros(b, 2, 1)], -1)
    grid = F.affine_grid(theta, (b, c, h, w), align_corners=False)
    field = (torch.rand(b, 2, 3, 3, generator=gen) * 2 - 1) * (0.08 * torch.rand(b, 1, 1, 1, generator=gen))
    field = field - field[:, :, 1:2, 1:2]
    disp = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=True)
    x = F.grid_sample(crops, grid + disp.permute(0, 2, 3, 1), mode="bilinear", padding_mode="zeros",
                      align_corners=False)
    k = torch.rand(b, 1, 1, 1, generator=gen) * 1.4 - 0.8
    thick = x + k.clamp(min=0) * (F.max_pool2d(x, 3, 1, 1) - x)
    return thick + (-k).clamp(min=0) * (-F.max_pool2d(-x, 3, 1, 1) - x)


def pad_images(images: torch.Tensor, pad_mode: str = "constant") -> torch.Tensor:
    """Pad training images by :data:`HALF` px on each side (once, before sampling crops)."""
    if pad_mode == "constant":
        return F.pad(images, (HALF, HALF, HALF, HALF))
    padded = F.pad(images.float(), (HALF, HALF, HALF, HALF), mode=pad_mode)
    return padded.round().to(torch.uint8) if images.dtype == torch.uint8 else padded


def sample_crops(images: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                 batch_size: int, gen: torch.Generator, extras: Optional[torch.Tensor] = None,
                 pad_mode: str = "constant", padded: Optional[torch.Tensor] = None, style: bool = False):
    """A training batch of crops with targets (see module docstring).

    ``images``: (M, C, H, W) float or uint8 (already at working scale; ``padded``: the same
    padded by :func:`pad_images`, computed here when not given), ``centres`` (M, N, 2),
    ``labels`` (M, N), ``valid`` (M, N); ``style``: apply :func:`style_warp`. Returns crops
    (B, C, 38, 38) float, class targets (B,) (-100 = ignore), offset targets (B, 2), extra
    targets (B, E) and a (B,) bool "positive" mask.
    """
    m, c, hh, ww = images.shape
    n_pos = batch_size // 2
    n_ring = batch_size // 4
    n_rand = batch_size - n_pos - n_ring
    img_idx = torch.randint(m, (batch_size,), generator=gen)
    # a random valid object per crop
    obj = torch.multinomial(valid[img_idx].float() + 1e-9, 1, generator=gen)[:, 0]
    oc = torch.round(centres[img_idx, obj])  # (B, 2)
    pts = torch.empty(batch_size, 2)
    pts[:n_pos] = oc[:n_pos] + torch.randint(-POS_RADIUS, POS_RADIUS + 1, (n_pos, 2), generator=gen)
    # hard negatives: L-inf distance 6..16 px from an object
    ring = torch.randint(-16, 17, (n_ring, 2), generator=gen)
    small = ring.abs().amax(1) < 6
    axis = torch.randint(0, 2, (n_ring,), generator=gen)
    sign = torch.randint(0, 2, (n_ring,), generator=gen) * 2 - 1
    ring[small, axis[small]] = sign[small] * torch.randint(6, 17, (int(small.sum()),), generator=gen)
    pts[n_pos:n_pos + n_ring] = oc[n_pos:n_pos + n_ring] + ring
    pts[n_pos + n_ring:] = torch.floor(torch.rand(n_rand, 2, generator=gen) * torch.tensor([ww + 1.0, hh + 1.0]))
    pts[:, 0].clamp_(0, ww)
    pts[:, 1].clamp_(0, hh)
    # targets: the nearest valid object in L-inf distance (where the style warp moves it)
    rel = centres[img_idx] - pts[:, None]                                     # (B, N, 2) px
    if style:
        maps = style_matrices(batch_size, gen)
        rel = rel @ torch.linalg.inv(maps).transpose(1, 2)
    d = rel.abs().amax(-1).masked_fill(~valid[img_idx], float("inf"))
    dmin, near = d.min(1)
    target = torch.full((batch_size,), -100, dtype=torch.long)
    target[dmin > POS_RADIUS + 1.5] = 0
    pos = dmin <= POS_RADIUS + 0.5
    target[pos] = labels[img_idx, near][pos] + 1
    off = rel[torch.arange(batch_size), near] / STRIDE
    ext = extras[img_idx, near] if extras is not None else torch.zeros(batch_size, 0)
    # crops: pad by HALF, then gather the integer window centred at pts
    if padded is None:
        padded = pad_images(images, pad_mode)
    x0, y0 = pts[:, 0].long(), pts[:, 1].long()
    ar = torch.arange(CROP)
    ys = (y0[:, None] + ar)[:, None, :, None]
    xs = (x0[:, None] + ar)[:, None, None, :]
    ch = torch.arange(c)[None, :, None, None]
    crops = padded[img_idx[:, None, None, None], ch, ys, xs].float()
    if images.dtype == torch.uint8:
        crops = crops / 255.0
    if style:
        crops = style_warp(crops, maps, gen)
    return crops, target, off, ext, pos


def train_cropnet(images: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                  num_classes: int, extras: Optional[torch.Tensor] = None, steps: int = 1500,
                  batch_size: int = 128, lr: float = 2e-3, width: int = 32, seed: int = 0,
                  use_augment: bool = True, pad_mode: str = "constant", time_limit: Optional[float] = None,
                  progress: bool = False, log: Optional[Callable[[str], None]] = None,
                  style: bool = False) -> CropNet:
    """Train a :class:`CropNet` (Adam with a one-cycle schedule; CE + offset/extra MSE at positives);
    ``style``: style augmentation of the crops (:func:`style_warp`)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = CropNet(images.shape[1], num_classes, 0 if extras is None else extras.shape[-1], width)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, desc="training structure checker", leave=False)
    t0 = time.time()
    padded = pad_images(images, pad_mode)
    net.train()
    grad_mode = torch.is_grad_enabled()
    torch.set_grad_enabled(True)  # callers may run under no_grad
    try:
        for step in range(steps):
            x, tgt, off_t, ext_t, pos = sample_crops(images, centres, labels, valid, batch_size, gen, extras,
                                                     pad_mode=pad_mode, padded=padded, style=style)
            if use_augment:
                x = augment(x, gen)
            logits, off, ext = net(x)
            loss = F.cross_entropy(logits, tgt, ignore_index=-100)
            loss = loss + F.mse_loss(off[pos], off_t[pos])
            if extras is not None:
                loss = loss + F.mse_loss(ext[pos], ext_t[pos])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
            if log is not None and (step + 1) % 250 == 0:
                log(f"step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
            if time_limit is not None and time.time() - t0 > time_limit:
                if log is not None:
                    log(f"time limit reached after {step + 1} steps")
                break
    finally:
        torch.set_grad_enabled(grad_mode)
        if bar is not None:
            bar.close()
    net.eval()
    return net
