import math

import pytest
import torch

from inference.metrics.detection import average_precision, box_ap, box_iou, count_accuracy

A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 20.0, 30.0, 30.0]
FAR = [50.0, 50.0, 60.0, 60.0]


def test_box_iou_hand_computed():
    iou = box_iou(torch.tensor([A, [0, 0, 10, 5]]), torch.tensor([A, [5, 0, 15, 10], B]))
    assert iou[0].tolist() == pytest.approx([1.0, 50 / 150, 0.0])
    assert iou[1].tolist() == pytest.approx([0.5, 25 / 125, 0.0])


def test_ap_hand_computed_coco_and_voc():
    preds = [torch.tensor([A, FAR, B])]
    scores = [torch.tensor([0.9, 0.8, 0.7])]
    gts = [torch.tensor([A, B])]
    # PR points: (0.5, 1), (0.5, 0.5), (1, 2/3); envelope 1, 2/3, 2/3
    voc = average_precision(preds, gts, scores, interpolation="voc")
    assert voc == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    coco = average_precision(preds, gts, scores)
    assert coco == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)


def test_ap_score_order_matters_and_duplicates_are_false_positives():
    preds = [torch.tensor([A, A, B])]
    gts = [torch.tensor([A, B])]
    # duplicate with the highest score: TP, FP, TP -> same as above
    ap = average_precision(preds, gts, [torch.tensor([0.9, 0.8, 0.7])], interpolation="voc")
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    # duplicate last: TP, TP, FP -> 1
    ap = average_precision(preds, gts, [torch.tensor([0.9, 0.1, 0.7])], interpolation="voc")
    assert ap == pytest.approx(1.0)


def test_ap_thresholds_and_padded_input():
    pred = torch.tensor([[[0, 0, 10, 5], [0, 0, 0, 0]], [[20, 20, 30, 30], [1, 1, 2, 2]]], dtype=torch.float)
    pvalid = torch.tensor([[True, False], [True, False]])
    true = torch.tensor([[A, [0, 0, 0, 0]], [B, [0, 0, 0, 0]]])
    tvalid = torch.tensor([[True, False], [True, False]])
    out = box_ap(pred, true, torch.tensor([[0.5, 0.9], [0.6, 0.9]]), pred_valid=pvalid, true_valid=tvalid)
    # image 0 box has IoU exactly 0.5: TP only at 0.5; image 1 exact: TP everywhere
    # threshold 0.5: AP 1; thresholds > 0.5: PR (0.5, 1) then (0.5, 0.5) -> 51/101
    assert out["AP@0.5"] == pytest.approx(1.0)
    assert out["AP@0.95"] == pytest.approx(51 / 101)
    assert out["AP@[.5:.95]"] == pytest.approx((1 + 9 * 51 / 101) / 10)
    assert len(out) == 11


def test_ap_edge_cases():
    assert average_precision([torch.zeros(0, 4)], [torch.tensor([A])]) == 0.0
    assert math.isnan(average_precision([torch.tensor([A])], [torch.zeros(0, 4)]))
    # a false positive in an image with no ground truth lowers precision
    ap = average_precision([torch.tensor([A]), torch.tensor([B])], [torch.tensor([A]), torch.zeros(0, 4)],
                           [torch.tensor([0.5]), torch.tensor([0.9])], interpolation="voc")
    assert ap == pytest.approx(0.5)


def test_count_accuracy():
    assert count_accuracy(torch.tensor([3, 4, 4, 10]), torch.tensor([3, 4, 10, 10])) == 0.75
    with pytest.raises(ValueError):
        count_accuracy([1, 2], [1])


# ------------------------------------------------------------------ cross-check with pycocotools
def _coco_ap(pred, scores, true):
    """COCO's AP@[.5:.95] and AP@0.5 (``COCOeval.stats[0:2]``) for one category, boxes (x0, y0, x1, y1)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        x0, y0, x1, y1 = b.tolist()
        return [x0, y0, x1 - x0, y1 - y0]

    images = [{"id": i} for i in range(len(true))]
    annotations = [{"image_id": i, "category_id": 1, "bbox": xywh(b), "iscrowd": 0, "area": float((b[2] - b[0]) * (b[3] - b[1]))}
                   for i, boxes in enumerate(true) for b in boxes]
    for n, a in enumerate(annotations, start=1):
        a["id"] = n
    detections = [{"image_id": i, "category_id": 1, "bbox": xywh(b), "score": float(s)}
                  for i, (boxes, ss) in enumerate(zip(pred, scores)) for b, s in zip(boxes, ss)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1}]}
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(detections), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats[0], evaluation.stats[1]


def test_box_ap_agrees_with_pycocotools():
    """Random scenes: true boxes, detections that jitter them (some far off, some missing) and
    false detections, on images with and without objects: AP@0.5 and AP@[.5:.95] equal COCO's."""
    g = torch.Generator().manual_seed(0)
    pred, scores, true = [], [], []
    for i in range(30):
        n = int(torch.randint(0, 5, (), generator=g))
        corner = torch.rand(n, 2, generator=g) * 100
        truth = torch.cat([corner, corner + 8 + torch.rand(n, 2, generator=g) * 20], 1).round()
        found = truth[torch.rand(n, generator=g) < 0.8]
        found = found + torch.randn(found.shape, generator=g) * torch.rand(len(found), 1, generator=g) * 6
        extra = torch.rand(int(torch.randint(0, 3, (), generator=g)), 2, generator=g) * 100
        found = torch.cat([found, torch.cat([extra, extra + 10], 1)])
        pred.append(found)
        scores.append(torch.rand(len(found), generator=g, dtype=torch.float64))
        true.append(truth)
    ours = box_ap(pred, true, scores)
    coco_mean, coco_50 = _coco_ap(pred, scores, true)
    assert 0.2 < coco_50 < 0.95 and 0.05 < coco_mean < coco_50  # neither trivial nor perfect
    assert ours["AP@0.5"] == pytest.approx(coco_50, abs=1e-12)
    assert ours["AP@[.5:.95]"] == pytest.approx(coco_mean, abs=1e-12)
