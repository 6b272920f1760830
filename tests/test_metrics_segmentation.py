import math

import pytest
import torch

from inference.metrics.segmentation import ari, contingency, mean_segmentation_covering, segmentation_covering


def t(*rows):
    return torch.tensor(rows, dtype=torch.long)


def test_ari_hand_computed():
    # contingency {(0,0):2, (1,1):1, (1,2):1}: index 1, expected 2*1/6, max 1.5 -> 4/7
    assert ari(t([0, 0, 1, 1]), t([0, 0, 1, 2])).item() == pytest.approx(4 / 7, abs=1e-6)
    # index 2, sums 6 and 3, 15 pairs: (2 - 1.2) / (4.5 - 1.2) = 8/33
    assert ari(t([0, 0, 0, 1, 1, 1]), t([0, 0, 1, 1, 2, 2])).item() == pytest.approx(8 / 33, abs=1e-6)


def test_ari_vectorised_batch_and_2d_maps():
    true = torch.tensor([[[0, 0], [1, 1]], [[0, 0], [0, 1]], [[3, 3], [3, 3]]])
    pred = torch.tensor([[[7, 7], [2, 2]], [[0, 0], [1, 2]], [[1, 1], [1, 1]]])
    out = ari(true, pred)
    assert out.shape == (3,)
    assert out[0].item() == pytest.approx(1.0)
    # image 1: true [0,0,0,1], pred [0,0,1,2]: index 1, sa 3, sb 1, pairs 6 -> (1-0.5)/(2-0.5) = 1/3
    assert out[1].item() == pytest.approx(1 / 3, abs=1e-6)
    assert out[2].item() == 1.0  # single cluster on both sides: 1 by convention


def test_ari_permutation_invariant_and_symmetric():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (5, 8, 8), generator=g)
    b = torch.randint(0, 3, (5, 8, 8), generator=g)
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(ari(a, b), ari(perm[a], b + 10))
    assert torch.allclose(ari(a, b), ari(b, a), atol=1e-6)


def test_ari_edge_cases():
    one = t([4, 4, 4, 4])
    split = t([0, 0, 1, 1])
    assert ari(one, one).item() == 1.0
    assert ari(one, split).item() == pytest.approx(0.0, abs=1e-7)
    assert ari(split, one).item() == pytest.approx(0.0, abs=1e-7)
    assert ari(t([0, 1, 2, 3]), t([5, 6, 7, 8])).item() == 1.0  # all singletons both sides
    assert ari(t([3]), t([1])).item() == 1.0


def test_foreground_ari_ignores_true_background():
    true = t([0, 0, 1, 1, 2, 2])
    pred = t([5, 6, 7, 7, 8, 8])  # background pixels split arbitrarily
    assert ari(true, pred).item() < 1.0
    assert ari(true, pred, ignore=0).item() == pytest.approx(1.0)
    # all foreground pixels in one predicted cluster while true has two objects -> 0
    assert ari(true, t([1, 1, 0, 0, 0, 0]), ignore=0).item() == pytest.approx(0.0, abs=1e-7)
    # nothing left -> NaN
    assert math.isnan(ari(t([0, 0]), t([1, 2]), ignore=0).item())


def test_ari_matches_pair_counting_bruteforce():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 3, (1, 12), generator=g)
    b = torch.randint(0, 4, (1, 12), generator=g)
    x, y = a[0].tolist(), b[0].tolist()
    n = len(x)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    both = sum(x[i] == x[j] and y[i] == y[j] for i, j in pairs)
    sa = sum(x[i] == x[j] for i, j in pairs)
    sb = sum(y[i] == y[j] for i, j in pairs)
    exp = sa * sb / len(pairs)
    ref = (both - exp) / ((sa + sb) / 2 - exp)
    assert ari(a, b).item() == pytest.approx(ref, abs=1e-6)


def test_ari_rejects_bad_input():
    with pytest.raises(ValueError):
        ari(t([0, 1]), t([0, 1, 2]))
    with pytest.raises(TypeError):
        ari(torch.zeros(1, 3), torch.zeros(1, 3))


def test_contingency_table():
    table, tv, pv = contingency(t([0, 0, 1, 1]), t([0, 0, 1, 2]))
    assert tv.tolist() == [0, 1] and pv.tolist() == [0, 1, 2]
    assert table[0].tolist() == [[2, 0, 0], [0, 1, 1]]


def test_segmentation_covering_hand_computed():
    # equal sizes: best IoUs 2/3 and 1/2
    assert mean_segmentation_covering(t([1, 1, 2, 2]), t([1, 1, 1, 2])).item() == pytest.approx(7 / 12, abs=1e-6)
    # sizes 3 and 1: best IoUs 2/3 and 1/2 -> mSC 7/12, SC (3*2/3 + 1/2)/4
    true, pred = t([1, 1, 1, 2]), t([1, 1, 2, 2])
    assert mean_segmentation_covering(true, pred).item() == pytest.approx(7 / 12, abs=1e-6)
    assert segmentation_covering(true, pred).item() == pytest.approx(0.625, abs=1e-6)
    assert mean_segmentation_covering(true, true + 3).item() == pytest.approx(1.0)


def test_segmentation_covering_ignore():
    true = t([0, 0, 1, 1])
    pred = t([5, 5, 5, 6])
    # ignoring true background: region 1 (2 px) best IoU max(1/4, 1/2) = 1/2, the IoU with the
    # predicted region 5 counts its background pixels too
    assert mean_segmentation_covering(true, pred, ignore=0).item() == pytest.approx(0.5)
    # with background: region 0 IoU with 5 is 2/3
    assert mean_segmentation_covering(true, pred).item() == pytest.approx((2 / 3 + 0.5) / 2)
    assert math.isnan(mean_segmentation_covering(t([0, 0]), t([0, 1]), ignore=0).item())


# ------------------------------------------------------------------ cross-check with scikit-learn
def test_ari_and_fg_ari_agree_with_scikit_learn():
    """Random label maps with few and many segments, and maps that differ only by relabelling or by
    a few pixels: ARI and foreground ARI equal ``sklearn.metrics.adjusted_rand_score``."""
    from sklearn.metrics import adjusted_rand_score

    g = torch.Generator().manual_seed(0)
    true = torch.randint(0, 4, (12, 16, 16), generator=g)
    true[:4] = torch.randint(0, 40, (4, 16, 16), generator=g)  # many small segments
    pred = torch.randint(0, 6, (12, 16, 16), generator=g)
    pred[4:8] = (true[4:8] * 7 + 3) % 11  # a relabelling: ARI 1
    noisy = true[8:].clone()
    flip = torch.rand(noisy.shape, generator=g) < 0.1
    pred[8:] = torch.where(flip, torch.randint(0, 4, noisy.shape, generator=g), noisy)  # close to the truth
    for ignore in (None, 0):
        ours = ari(true, pred, ignore=ignore).double()
        keep = [torch.ones(16 * 16, dtype=torch.bool) if ignore is None else t.flatten() != ignore for t in true]
        theirs = torch.tensor([adjusted_rand_score(t.flatten()[k].numpy(), p.flatten()[k].numpy())
                               for t, p, k in zip(true, pred, keep)], dtype=torch.float64)
        assert torch.allclose(ours, theirs, atol=1e-6, rtol=0), (ignore, (ours - theirs).abs().max())
    assert torch.allclose(ari(true[4:8], pred[4:8]), torch.ones(4))
