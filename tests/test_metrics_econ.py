import math

import pytest
import torch

from inference.metrics.econ import (assign_background_layer, assign_objects_to_layers, expert_specialisation,
                                    segmentation_from_regions, shape_completion_iou)


def test_expert_specialisation_hand_computed():
    classes = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, -1])
    experts = torch.tensor([1, 1, 1, 2, 0, 0, 0, 2, 3, 0])
    out = expert_specialisation(classes, experts, num_classes=4, num_experts=4)
    assert out["matrix"].tolist() == [[0, 3, 1, 0], [3, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]]
    assert out["per_class"][:3].tolist() == pytest.approx([0.75, 1.0, 0.5])
    assert math.isnan(out["per_class"][3].item())
    assert out["mean"] == pytest.approx((0.75 + 1.0 + 0.5) / 3)
    assert out["best_expert"].tolist() == [1, 0, 2, -1]
    assert out["distinct"] is True
    assert out["num_objects"] == 9


def test_expert_specialisation_collapse_not_distinct():
    out = expert_specialisation(torch.tensor([0, 1, 2]), torch.tensor([3, 3, 3]))
    assert out["mean"] == 1.0 and out["distinct"] is False


def test_assign_objects_to_layers():
    vis = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    vis[0, 0, :2, :2] = True
    vis[0, 1, 2:, 2:] = True  # object 2 fully hidden
    regions = torch.zeros(1, 3, 1, 4, 4)
    regions[0, 0] = 1.0
    regions[0, 0, 0, 2:, 2:] = 0.2
    regions[0, 2, 0, 2:, 2:] = 0.8
    regions[0, 0, 0, 2:, 2:] = 0.2
    layer = assign_objects_to_layers(vis, regions)
    assert layer.tolist() == [[0, 2, -1]]
    assert assign_objects_to_layers(vis, regions, valid=torch.tensor([[False, True, True]])).tolist() == [[-1, 2, -1]]
    seg = torch.ones(1, 4, 4, dtype=torch.long)
    seg[0, 3, 3] = 0
    assert assign_background_layer(seg, regions).tolist() == [2]
    assert segmentation_from_regions(regions)[0, 3, 3].item() == 2


def test_shape_completion_iou_hand_computed():
    true = torch.zeros(2, 4, 4, dtype=torch.bool)
    true[0, :2, :2] = True  # 4 px
    true[1, :, :] = True
    pred = torch.zeros(2, 4, 4)
    pred[0, :2, :3] = 0.9  # 6 px, 4 inside -> IoU 4/6
    pred[1, :2, :] = 0.6  # 8 px of 16 -> 0.5
    pred[1, 2:, :] = 0.4  # below threshold
    out = shape_completion_iou(pred, true, torch.tensor([True, True]))
    assert out["per_object"].tolist() == pytest.approx([4 / 6, 0.5])
    assert out["mean"] == pytest.approx((4 / 6 + 0.5) / 2)
    out = shape_completion_iou(pred, true, torch.tensor([False, True]))
    assert out["mean"] == pytest.approx(0.5) and out["count"] == 1
    assert math.isnan(out["per_object"][0].item())
    assert math.isnan(shape_completion_iou(pred, true, torch.tensor([False, False]))["mean"])
