import math

import pytest
import torch

from inference.metrics.representation import nearest_object_labels, zwhat_classification_accuracy


def test_nearest_object_labels():
    boxes = torch.tensor([[[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]], [[0] * 4] * 3], dtype=torch.float)
    labels = torch.tensor([[7, 3, 9], [1, 1, 1]])
    valid = torch.tensor([[True, True, False], [False, False, False]])
    centres = torch.tensor([[[6.0, 4.0], [24.0, 27.0]], [[1.0, 1.0], [2.0, 2.0]]])
    lab, dist = nearest_object_labels(centres, boxes, labels, valid)
    assert lab.tolist() == [[7, 3], [-1, -1]]
    assert dist[0].tolist() == pytest.approx([math.hypot(1, 1), math.hypot(1, 2)])
    assert torch.isinf(dist[1]).all()


def test_zwhat_classifier_separable_clusters():
    g = torch.Generator().manual_seed(0)
    m = 600
    labels = torch.randint(0, 10, (m,), generator=g)
    centres = torch.randn(10, 8, generator=g) * 4
    feats = centres[labels] + 0.3 * torch.randn(m, 8, generator=g)
    img = torch.arange(m) // 3
    out = zwhat_classification_accuracy(feats, labels, img, epochs=20)
    assert out["accuracy"] > 0.95
    assert out["num_train"] == 480 and out["num_test"] == 120
    # random labels: chance level
    rnd = zwhat_classification_accuracy(torch.randn(m, 8, generator=g), labels, img, epochs=5)
    assert rnd["accuracy"] < 0.4
    with pytest.raises(ValueError):
        zwhat_classification_accuracy(feats, torch.full((m,), -1), img)
