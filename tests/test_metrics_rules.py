import torch

from inference.metrics.rules import ARROW_CLASS, rule_arrow, rule_mnist4, rule_mnist4_10, rule_mnist10

# MNIST-4: 3 4 5 6 clockwise from top-left on a 60 x 40 rectangle
C4 = torch.tensor([[30.0, 20.0], [90.0, 22.0], [91.0, 60.0], [29.0, 61.0]])
L4 = torch.tensor([3, 4, 5, 6])


def test_mnist4_accepts_valid_and_order_free():
    assert rule_mnist4(C4, L4) == (True, "ok")
    perm = torch.tensor([2, 0, 3, 1])
    assert rule_mnist4(C4[perm], L4[perm])[0]
    assert rule_mnist4(C4 / 2, L4, image_size=64)[0]


def test_mnist4_rejects():
    assert rule_mnist4(C4[:3], L4[:3]) == (False, "3 digits, expected 4")
    assert not rule_mnist4(C4, torch.tensor([3, 4, 5, 7]))[0]          # not consecutive
    assert not rule_mnist4(C4, torch.tensor([3, 4, 4, 6]))[0]          # doubled
    assert not rule_mnist4(C4, torch.tensor([4, 3, 5, 6]))[0]          # swapped TL/TR
    assert not rule_mnist4(C4, torch.tensor([3, 6, 5, 4]))[0]          # counter-clockwise
    moved = C4.clone()
    moved[0, 1] += 15  # TL off its row
    assert rule_mnist4(moved, L4) == (False, "top or bottom pair not on one row")
    moved = C4.clone()
    moved[1, 0] -= 12  # TR off its column
    assert rule_mnist4(moved, L4) == (False, "left or right pair not in one column")
    squashed = torch.tensor([[30.0, 20.0], [40.0, 20.0], [40.0, 60.0], [30.0, 60.0]])
    assert not rule_mnist4(squashed, L4)[0]


def _mnist10(q01=0, q234=1, q567=3, q89=2):
    off = {0: (10, 10), 1: (74, 10), 2: (74, 74), 3: (10, 74)}
    centres, labels = [], []
    for g, q in zip(((0, 1), (2, 3, 4), (5, 6, 7), (8, 9)), (q01, q234, q567, q89)):
        for k, d in enumerate(g):
            centres.append([off[q][0] + 10 + 15 * k, off[q][1] + 10 + 12 * k])
            labels.append(d)
    return torch.tensor(centres, dtype=torch.float), torch.tensor(labels)


def test_mnist10_accepts_both_diagonal_arrangements():
    assert rule_mnist10(*_mnist10()) == (True, "ok")
    assert rule_mnist10(*_mnist10(2, 3, 1, 0))[0]


def test_mnist10_rejects():
    c, l = _mnist10()
    assert not rule_mnist10(c[:9], l[:9])[0]
    dup = l.clone()
    dup[3] = 0
    assert not rule_mnist10(c, dup)[0]
    swapped = l.clone()
    swapped[[0, 2]] = swapped[[2, 0]]  # 0 <-> 2 across groups
    assert "split" in rule_mnist10(c, swapped)[1]
    wrong = c.clone()
    wrong[0] = torch.tensor([100.0, 100.0])  # digit 0 into the BR quadrant
    assert not rule_mnist10(wrong, l)[0]
    assert "diagonal" in rule_mnist10(*_mnist10(1, 0, 3, 2))[1]   # {0,1} and {2,3,4} exchanged


def test_mnist4_10_dispatch():
    assert rule_mnist4_10(C4, L4)[0]
    assert rule_mnist4_10(*_mnist10())[0]
    assert rule_mnist4_10(C4[:3], L4[:3]) == (False, "3 digits, expected 4 or 10")


def test_arrow_rule():
    centres = torch.tensor([[20.0, 60.0], [64.0, 60.0], [108.0, 60.0], [64.0, 110.0]])
    labels = torch.tensor([0, 1, 0, ARROW_CLASS])
    up = torch.tensor([[0.0, 0.0]] * 3 + [[0.0, -1.0]])
    assert rule_arrow(centres, labels, up) == (True, "ok")
    left = torch.tensor([[0.0, 0.0]] * 3 + [[-44.0, -50.0]])  # at object 0 (not odd)
    assert rule_arrow(centres, labels, left)[1] == "arrow points at a shape that is not the odd one"
    skew = torch.tensor([[0.0, 0.0]] * 3 + [[-0.6, -1.0]])  # nearest is odd one but 31 degrees off
    assert not rule_arrow(centres, labels, skew)[0]
    assert rule_arrow(centres, torch.tensor([0, 0, 0, ARROW_CLASS]), up)[1] == "all three shapes the same"
    assert rule_arrow(centres, torch.tensor([0, 1, 2, ARROW_CLASS]), up)[1] == "three different shapes"
    assert rule_arrow(centres[:3], labels[:3], up[:3])[1] == "0 arrows, expected 1"
    assert not rule_arrow(centres[1:], labels[1:], up[1:])[0]
