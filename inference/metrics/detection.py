"""Box metrics: IoU, average precision (COCO-style) and object-count accuracy.

Protocol (also in ``docs/metrics.md``):

* Boxes are ``(x0, y0, x1, y1)`` in pixels with ``x1, y1`` exclusive (the datasets' format),
  so a box's area is ``(x1 - x0) * (y1 - y0)``.
* For each IoU threshold, detections of all images are pooled and sorted by descending score
  (ties keep their input order). Inside each image a detection is matched greedily, in score
  order, to the unmatched ground-truth box with the highest IoU; it is a true positive when that
  IoU is >= the threshold, else a false positive. Ground-truth boxes never matched are misses.
* AP is the area under the precision/recall curve with COCO's 101-point interpolation:
  precision is made monotone (running max from the right) and sampled at recall
  0, 0.01, ..., 1.0 (0 where that recall is never reached). ``interpolation="voc"`` gives the
  all-point (VOC 2010+) area instead.
* ``AP@0.5`` uses threshold 0.5; ``AP@[.5:.95]`` is the mean over 0.50, 0.55, ..., 0.95.
* With no ground-truth boxes at all AP is NaN.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch

__all__ = ["box_iou", "average_precision", "box_ap", "count_accuracy", "COCO_IOU_THRESHOLDS"]

COCO_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

BoxesLike = Union[torch.Tensor, Sequence[torch.Tensor]]


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix (..., N, M) between boxes ``a`` (..., N, 4) and ``b`` (..., M, 4)."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    area_a = (a[..., 2] - a[..., 0]).clamp_min(0) * (a[..., 3] - a[..., 1]).clamp_min(0)
    area_b = (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def _to_list(boxes: BoxesLike, valid: Optional[torch.Tensor], name: str) -> List[torch.Tensor]:
    if isinstance(boxes, torch.Tensor):
        if boxes.dim() != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"{name} must be (B, N, 4) or a list of (N_i, 4), got {tuple(boxes.shape)}")
        if valid is None:
            return [b for b in boxes]
        valid = torch.as_tensor(valid, dtype=torch.bool)
        return [b[v] for b, v in zip(boxes, valid)]
    out = []
    for i, b in enumerate(boxes):
        b = torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4)
        if valid is not None:
            b = b[torch.as_tensor(valid[i], dtype=torch.bool)]
        out.append(b)
    return out


def _scores_list(scores, pred: List[torch.Tensor], valid) -> List[torch.Tensor]:
    if scores is None:
        return [torch.ones(len(b), dtype=torch.float64) for b in pred]
    if isinstance(scores, torch.Tensor) and scores.dim() == 2:
        if valid is None:
            return [s.double() for s in scores]
        return [s[torch.as_tensor(v, dtype=torch.bool)].double() for s, v in zip(scores, valid)]
    out = []
    for i, s in enumerate(scores):
        s = torch.as_tensor(s, dtype=torch.float64).reshape(-1)
        if valid is not None:
            s = s[torch.as_tensor(valid[i], dtype=torch.bool)]
        out.append(s)
    return out


def _match(pred: List[torch.Tensor], scores: List[torch.Tensor], true: List[torch.Tensor],
           thresholds: Sequence[float]):
    """Greedy per-image matching; returns (scores (P,), tp (T, P) bool, num_true)."""
    all_scores, all_tp = [], []
    num_true = 0
    for pb, ps, tb in zip(pred, scores, true):
        num_true += len(tb)
        if len(pb) == 0:
            continue
        if len(ps) != len(pb):
            raise ValueError(f"got {len(ps)} scores for {len(pb)} predicted boxes")
        order = torch.sort(ps, descending=True, stable=True).indices
        pb, ps = pb[order], ps[order]
        tp = torch.zeros(len(thresholds), len(pb), dtype=torch.bool)
        if len(tb):
            iou = box_iou(pb, tb)  # (P, G)
            for k, thr in enumerate(thresholds):
                taken = torch.zeros(len(tb), dtype=torch.bool)
                for i in range(len(pb)):
                    cand = iou[i].masked_fill(taken, -1.0)
                    j = int(torch.argmax(cand))
                    if cand[j] >= thr - 1e-12:
                        taken[j] = True
                        tp[k, i] = True
        all_scores.append(ps)
        all_tp.append(tp)
    if all_scores:
        return torch.cat(all_scores), torch.cat(all_tp, 1), num_true
    return torch.zeros(0, dtype=torch.float64), torch.zeros(len(thresholds), 0, dtype=torch.bool), num_true


def _ap_from_tp(scores: torch.Tensor, tp: torch.Tensor, num_true: int, interpolation: str) -> float:
    if num_true == 0:
        return float("nan")
    if scores.numel() == 0:
        return 0.0
    order = torch.sort(scores, descending=True, stable=True).indices
    tp = tp[order].double()
    ctp = torch.cumsum(tp, 0)
    cfp = torch.cumsum(1 - tp, 0)
    recall = ctp / num_true
    precision = ctp / (ctp + cfp)
    # monotone precision envelope
    prec = torch.flip(torch.cummax(torch.flip(precision, [0]), 0).values, [0])
    if interpolation == "coco":
        rs = torch.arange(101, dtype=torch.float64) / 100  # exact 0, 0.01, ..., 1
        idx = torch.searchsorted(recall, rs, side="left")
        vals = torch.where(idx < len(prec), prec[idx.clamp_max(len(prec) - 1)], torch.zeros_like(rs))
        return float(vals.mean())
    if interpolation == "voc":
        r = torch.cat([torch.zeros(1, dtype=torch.float64), recall])
        return float(((r[1:] - r[:-1]) * prec).sum())
    raise ValueError(f"interpolation must be 'coco' or 'voc', got {interpolation!r}")


def average_precision(pred_boxes: BoxesLike, true_boxes: BoxesLike, scores=None,
                      iou_threshold: float = 0.5, pred_valid=None, true_valid=None,
                      interpolation: str = "coco") -> float:
    """AP of predicted boxes (with confidence ``scores``) against ground truth at one IoU threshold.

    ``pred_boxes`` / ``true_boxes``: padded tensors (B, N, 4) with optional validity masks
    (B, N), or lists of (N_i, 4) tensors. ``scores``: same layout as the predicted boxes
    ((B, N) or list of (N_i,)); None means all 1 (ties keep input order).
    """
    return box_ap(pred_boxes, true_boxes, scores, (iou_threshold,), pred_valid, true_valid,
                  interpolation)[f"AP@{iou_threshold:g}"]


def box_ap(pred_boxes: BoxesLike, true_boxes: BoxesLike, scores=None,
           thresholds: Sequence[float] = COCO_IOU_THRESHOLDS, pred_valid=None, true_valid=None,
           interpolation: str = "coco") -> Dict[str, float]:
    """AP at each IoU threshold (keys ``"AP@0.5"``, ``"AP@0.55"`` ...) plus their mean under
    ``"AP@[.5:.95]"`` (``"AP@mean"`` for thresholds other than COCO's ten)."""
    pred = _to_list(pred_boxes, pred_valid, "pred_boxes")
    true = _to_list(true_boxes, true_valid, "true_boxes")
    if len(pred) != len(true):
        raise ValueError(f"{len(pred)} images of predictions but {len(true)} of ground truth")
    sc = _scores_list(scores, pred, pred_valid)
    pred = [p.double() for p in pred]
    true = [t.double() for t in true]
    thresholds = [float(t) for t in thresholds]
    s, tp, nt = _match(pred, sc, true, thresholds)
    out = {f"AP@{thr:g}": _ap_from_tp(s, tp[k], nt, interpolation) for k, thr in enumerate(thresholds)}
    key = "AP@[.5:.95]" if tuple(thresholds) == COCO_IOU_THRESHOLDS else "AP@mean"
    out[key] = float(torch.tensor(list(out.values()), dtype=torch.float64).mean())
    return out


def count_accuracy(pred_counts, true_counts) -> float:
    """Fraction of images whose predicted object count equals the true count."""
    p = torch.as_tensor(pred_counts).reshape(-1).long()
    t = torch.as_tensor(true_counts).reshape(-1).long()
    if p.shape != t.shape:
        raise ValueError(f"{p.numel()} predicted counts but {t.numel()} true counts")
    if p.numel() == 0:
        return float("nan")
    return float((p == t).double().mean())
