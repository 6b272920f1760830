"""ECON-specific metrics: expert specialisation and shape completion.

* :func:`assign_objects_to_layers` gives each ground-truth object the inferred layer (step)
  whose soft region overlaps the object's visible mask most (sum of region probability over
  the object's visible pixels). Objects that are invalid or fully hidden get -1.
* :func:`expert_specialisation` takes, per ground-truth object, its class and the expert that
  won the layer assigned to it, and reports for each class the share of its objects won by its
  most frequent expert (1.0 = the class is always explained by the same expert), the mean of
  these shares over the classes present, the class x expert count matrix and whether the
  classes' favourite experts are all distinct.
* :func:`shape_completion_iou` is the IoU between an inferred unoccluded shape (the winning
  expert's mask probabilities at the object's layer, thresholded at 0.5) and the ground-truth
  full shape, averaged over the objects that are occluded (visible mask != full mask).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

__all__ = ["assign_objects_to_layers", "assign_background_layer", "expert_specialisation",
           "shape_completion_iou", "mask_iou", "segmentation_from_regions"]


def _squeeze_channel(x: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B, T, 1, H, W) -> (B, T, H, W) (accept both)."""
    x = torch.as_tensor(x)
    if x.dim() == ndim + 1 and x.shape[-3] == 1:
        x = x.squeeze(-3)
    if x.dim() != ndim:
        raise ValueError(f"expected a {ndim}-d tensor (or with a singleton channel), got shape {tuple(x.shape)}")
    return x


def assign_objects_to_layers(visible_masks: torch.Tensor, regions: torch.Tensor,
                             valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Layer index (0-based step ``t - 1``) per ground-truth object, -1 where none.

    ``visible_masks``: bool (B, N, H, W); ``regions``: (B, T, 1, H, W) or (B, T, H, W) soft
    regions; ``valid``: bool (B, N). Returns long (B, N).
    """
    vis = _squeeze_channel(visible_masks, 4).to(torch.float32)
    reg = _squeeze_channel(regions, 4).to(torch.float32)
    if vis.shape[0] != reg.shape[0] or vis.shape[-2:] != reg.shape[-2:]:
        raise ValueError(f"visible masks {tuple(vis.shape)} and regions {tuple(reg.shape)} do not match")
    overlap = torch.einsum("bnhw,bthw->bnt", vis, reg)
    layer = overlap.argmax(-1)
    ok = vis.flatten(2).sum(-1) > 0
    if valid is not None:
        ok = ok & torch.as_tensor(valid, dtype=torch.bool, device=ok.device)
    return torch.where(ok, layer, torch.full_like(layer, -1))


def assign_background_layer(segmentation: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Layer whose region overlaps the background pixels (segmentation == 0) most, (B,) long."""
    bg = (torch.as_tensor(segmentation) == 0)[:, None]
    return assign_objects_to_layers(bg, regions)[:, 0]


def segmentation_from_regions(regions: torch.Tensor) -> torch.Tensor:
    """Hard predicted segmentation (B, H, W): index of the layer with the largest region."""
    return _squeeze_channel(regions, 4).argmax(1)


def expert_specialisation(classes: torch.Tensor, experts: torch.Tensor,
                          num_classes: Optional[int] = None,
                          num_experts: Optional[int] = None) -> Dict:
    """Per-class specialisation of experts.

    ``classes``, ``experts``: integer tensors of the same shape, one entry per ground-truth
    object (negative entries, e.g. unassigned objects, are skipped). Returns a dict with
    ``per_class`` (C,) float (NaN for classes without objects), ``mean`` (mean over classes
    present), ``best_expert`` (C,) long (-1 when absent), ``matrix`` (C, K) long counts,
    ``distinct`` (whether the present classes' best experts are pairwise different) and
    ``num_objects``.
    """
    c = torch.as_tensor(classes).reshape(-1).long()
    e = torch.as_tensor(experts, device=c.device).reshape(-1).long()
    if c.shape != e.shape:
        raise ValueError(f"{c.numel()} classes but {e.numel()} experts")
    keep = (c >= 0) & (e >= 0)
    c, e = c[keep], e[keep]
    nc = int(num_classes) if num_classes is not None else (int(c.max()) + 1 if c.numel() else 0)
    ne = int(num_experts) if num_experts is not None else (int(e.max()) + 1 if e.numel() else 0)
    if c.numel() and (int(c.max()) >= nc or int(e.max()) >= ne):
        raise ValueError("a class or expert index is out of range of num_classes/num_experts")
    matrix = torch.zeros(nc * max(ne, 1), dtype=torch.long, device=c.device)
    matrix.scatter_add_(0, c * max(ne, 1) + e, torch.ones_like(c))
    matrix = matrix.reshape(nc, max(ne, 1))[:, :ne]
    totals = matrix.sum(1)
    if ne:
        top, best = matrix.max(1)
    else:
        top = torch.zeros(nc, dtype=torch.long)
        best = torch.zeros(nc, dtype=torch.long)
    present = totals > 0
    per_class = torch.where(present, top.double() / totals.clamp_min(1).double(),
                            torch.full((nc,), float("nan"), dtype=torch.float64))
    best = torch.where(present, best, torch.full_like(best, -1))
    mean = float(per_class[present].mean()) if bool(present.any()) else float("nan")
    chosen = best[present]
    return {
        "per_class": per_class.float(),
        "mean": mean,
        "best_expert": best,
        "matrix": matrix,
        "distinct": bool(chosen.unique().numel() == chosen.numel()),
        "num_objects": int(c.numel()),
    }


def mask_iou(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """IoU of bool masks (..., H, W) -> (...); NaN where both are empty."""
    p = torch.as_tensor(pred, dtype=torch.bool)
    t = torch.as_tensor(true, dtype=torch.bool)
    inter = (p & t).flatten(-2).sum(-1).double()
    union = (p | t).flatten(-2).sum(-1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, float("nan")))


def shape_completion_iou(pred_masks: torch.Tensor, true_masks: torch.Tensor,
                         occluded: Optional[torch.Tensor] = None, threshold: float = 0.5) -> Dict:
    """IoU of inferred unoccluded shapes against ground-truth full shapes.

    ``pred_masks``: (..., H, W) shape probabilities (or bool) for each object, already matched
    to the objects (e.g. the mask of each object's assigned layer); ``true_masks``: bool
    (..., H, W) full shapes; ``occluded``: bool (...) selects the objects to average over
    (None = all). Predictions are binarised at ``threshold`` (bool input is used as is).
    Returns ``{"mean": float, "per_object": (...) float (NaN where not selected), "count": int}``.
    """
    p = torch.as_tensor(pred_masks)
    t = torch.as_tensor(true_masks, dtype=torch.bool)
    if p.shape != t.shape:
        raise ValueError(f"predicted masks {tuple(p.shape)} and true masks {tuple(t.shape)} differ in shape")
    pb = p if p.dtype == torch.bool else p > threshold
    iou = mask_iou(pb, t)
    sel = torch.ones(iou.shape, dtype=torch.bool) if occluded is None else torch.as_tensor(occluded, dtype=torch.bool)
    if sel.shape != iou.shape:
        raise ValueError(f"occluded has shape {tuple(sel.shape)}, expected {tuple(iou.shape)}")
    sel = sel & ~torch.isnan(iou)
    per = torch.where(sel, iou, torch.full_like(iou, float("nan")))
    n = int(sel.sum())
    return {"mean": float(iou[sel].mean()) if n else float("nan"), "per_object": per.float(), "count": n}
