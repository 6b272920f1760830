"""Segmentation metrics on integer label maps: adjusted Rand index and segmentation covering.

All functions take label maps of shape (B, H, W) (or (B, N) / (B, ...) in general: every
dimension after the first is flattened) with arbitrary integer labels, and are vectorised over
the batch: the per-image contingency tables are built with one ``scatter_add`` over the whole
batch, never with a Python loop over images.

Conventions (also in ``docs/metrics.md``):

* ``ari``: the Hubert & Arabie adjusted Rand index of the pixel partitions. When the
  denominator vanishes, which happens exactly when both partitions are a single cluster or
  both are all singletons (including one pixel), the two partitions are identical and the ARI
  is 1.0 (the scikit-learn convention). An image with no pixels left after ``ignore`` gets NaN.
* ``ignore=L`` drops every pixel whose *true* label is ``L`` before the ARI is computed
  (``ignore=0`` on the datasets' ``segmentation`` maps is the foreground ARI, FG-ARI).
* ``segmentation_covering`` / ``mean_segmentation_covering``: covering of the ground-truth
  regions by the predicted ones, following GENESIS (Engelcke et al. 2020): for each true
  region R (label != ``ignore``) the best IoU with any predicted region R' is taken. IoUs use
  the full regions (pixels of ignored true labels still belong to the predicted regions).
  The mean segmentation covering (mSC) averages these best IoUs over the true regions with
  equal weight; the (weighted) segmentation covering (SC) weights each by |R| and divides by
  the number of non-ignored pixels. An image without true regions gets NaN.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["contingency", "ari", "segmentation_covering", "mean_segmentation_covering"]


def _check_pair(true: torch.Tensor, pred: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    true = torch.as_tensor(true)
    pred = torch.as_tensor(pred, device=true.device)
    if true.shape != pred.shape:
        raise ValueError(f"label maps must have the same shape, got {tuple(true.shape)} and {tuple(pred.shape)}")
    if true.dim() < 2:
        raise ValueError(f"label maps must be batched (B, H, W) or (B, N), got shape {tuple(true.shape)}")
    for name, t in (("true", true), ("pred", pred)):
        if t.is_floating_point() or t.is_complex():
            raise TypeError(f"{name} must be an integer or bool label map, got dtype {t.dtype}")
    return true.reshape(true.shape[0], -1).long(), pred.reshape(pred.shape[0], -1).long()


def contingency(true: torch.Tensor, pred: torch.Tensor, weight: Optional[torch.Tensor] = None):
    """Per-image contingency tables.

    Returns ``(table, true_labels, pred_labels)``: ``table`` is float64 (B, Kt, Kp) with
    ``table[b, i, j]`` = number of pixels of image ``b`` with true label ``true_labels[i]`` and
    predicted label ``pred_labels[j]`` (optionally weighted by ``weight`` (B, ...), e.g. a 0/1
    mask). Labels are the sorted unique values over the whole batch.
    """
    t, p = _check_pair(true, pred)
    b, n = t.shape
    t_vals, t_idx = torch.unique(t, return_inverse=True)
    p_vals, p_idx = torch.unique(p, return_inverse=True)
    kt, kp = max(t_vals.numel(), 1), max(p_vals.numel(), 1)
    flat = (t_idx * kp + p_idx).reshape(b, n)
    w = (torch.ones(b, n, dtype=torch.float64, device=t.device) if weight is None
         else torch.as_tensor(weight, device=t.device).reshape(b, n).to(torch.float64))
    table = torch.zeros(b, kt * kp, dtype=torch.float64, device=t.device)
    table.scatter_add_(1, flat, w)
    return table.reshape(b, kt, kp), t_vals, p_vals


def _comb2(x: torch.Tensor) -> torch.Tensor:
    return x * (x - 1) / 2


def ari(true: torch.Tensor, pred: torch.Tensor, ignore: Optional[int] = None) -> torch.Tensor:
    """Adjusted Rand index per image.

    ``true``, ``pred``: integer label maps (B, H, W) (any trailing shape). ``ignore``: a true
    label whose pixels are left out (``ignore=0`` = foreground ARI). Returns float32 (B,).
    """
    t, p = _check_pair(true, pred)
    weight = None if ignore is None else (t != int(ignore))
    table, _, _ = contingency(t, p, weight)
    n = table.sum((1, 2))
    a = table.sum(2)
    bsum = table.sum(1)
    index = _comb2(table).sum((1, 2))
    sa = _comb2(a).sum(1)
    sb = _comb2(bsum).sum(1)
    pairs = _comb2(n)
    expected = torch.where(pairs > 0, sa * sb / pairs.clamp_min(1e-300), torch.zeros_like(pairs))
    maximum = (sa + sb) / 2
    denom = maximum - expected
    # denom == 0 exactly when both partitions are one cluster or both all singletons
    # (identical partitions): ARI := 1 by convention. Counts are exact in float64.
    degenerate = denom.abs() < 1e-9
    out = torch.where(degenerate, torch.ones_like(denom), (index - expected) / torch.where(degenerate, torch.ones_like(denom), denom))
    out = torch.where(n > 0, out, torch.full_like(out, float("nan")))
    return out.float()


def segmentation_covering(true: torch.Tensor, pred: torch.Tensor, ignore: Optional[int] = None,
                          weighted: bool = True) -> torch.Tensor:
    """Segmentation covering of the true regions by the predicted regions, per image (B,).

    ``weighted=True``: SC, the best IoU of each true region weighted by its pixel count;
    ``weighted=False``: mSC, the plain mean over true regions. Regions with true label
    ``ignore`` are not covered (but their pixels still count in predicted regions' areas).
    """
    t, p = _check_pair(true, pred)
    table, t_vals, _ = contingency(t, p)
    area_t = table.sum(2)  # (B, Kt)
    area_p = table.sum(1)  # (B, Kp)
    union = area_t[:, :, None] + area_p[:, None, :] - table
    iou = table / union.clamp_min(1.0)
    best = iou.amax(2)  # (B, Kt)
    present = area_t > 0
    if ignore is not None:
        present = present & (t_vals != int(ignore))[None, :]
    present_f = present.to(torch.float64)
    if weighted:
        num = (best * area_t * present_f).sum(1)
        den = (area_t * present_f).sum(1)
    else:
        num = (best * present_f).sum(1)
        den = present_f.sum(1)
    out = torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))
    return out.float()


def mean_segmentation_covering(true: torch.Tensor, pred: torch.Tensor,
                               ignore: Optional[int] = None) -> torch.Tensor:
    """Mean segmentation covering (mSC, GENESIS): unweighted mean over true regions (B,)."""
    return segmentation_covering(true, pred, ignore=ignore, weighted=False)
