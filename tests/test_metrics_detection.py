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
